"""Forget a retired consumer: its cursors and dedup markers go, so status stops listing it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .._db import translate_errors
from .._identifiers import validate_schema_name
from .._sql import queries

__all__ = ["ForgetResult", "forget_consumer"]


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What :func:`forget_consumer` removed; nothing when ``live`` members refused it."""

    live: int
    cursors: int
    markers: int
    attempts: int
    leases: int
    members: int

    @property
    def refused(self) -> bool:
        """A live process of the consumer exists: nothing was removed."""
        return self.live > 0


async def forget_consumer(
    pool: asyncpg.Pool | asyncpg.Connection, name: str, *, schema: str = "public"
) -> ForgetResult:
    """Remove consumer ``name``'s cursors, dedup markers, attempts, leases and members.

    One statement (its own transaction). Refuses, removing nothing, while a live member
    of the consumer exists: stop every process of it first (a running one would re-read
    everything its cursors had passed). Dead letters stay. Its events are then no longer
    held back from ``prune`` by it.
    """
    validate_schema_name(schema)
    with translate_errors(schema):
        row = await pool.fetchrow(queries(schema).consumer_forget, name)
    return ForgetResult(
        live=row["live"],
        cursors=row["cursors"],
        markers=row["markers"],
        attempts=row["attempts"],
        leases=row["leases"],
        members=row["members"],
    )
