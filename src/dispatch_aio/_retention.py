"""Retention: delete old events every consumer has passed, with their dedup markers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from ._db import translate_errors
from ._errors import UsageError
from ._identifiers import validate_schema_name
from ._sql import queries

__all__ = ["PruneResult", "prune"]


@dataclass(frozen=True)
class PruneResult:
    """What a prune deleted."""

    events: int
    dedup_markers: int


async def prune(
    pool: asyncpg.Pool,
    *,
    older_than: timedelta,
    schema: str = "public",
    batch_size: int = 5_000,
    progress: Callable[[PruneResult], None] | None = None,
) -> PruneResult:
    """Delete events older than ``older_than`` that no consumer still needs.

    An event stays while any consumer's cursor on its type has not passed it, or while an
    unresolved dead letter points at it (a replay needs it). Runs in batches of
    ``batch_size``, each its own short transaction, so it never holds back consumers for
    long; ``progress`` is called after each batch with the running totals.

    A consumer that starts later with ``start_from="beginning"`` will not see what was
    pruned: keep events as long as a new consumer may need them.
    """
    validate_schema_name(schema)
    if older_than < timedelta(0):
        raise UsageError("older_than must not be negative")
    if batch_size < 1:
        raise UsageError("batch_size must be at least 1")
    query = queries(schema).prune_events
    events = markers = 0
    with translate_errors(schema):
        while True:
            row = await pool.fetchrow(query, older_than.total_seconds(), batch_size)
            events += row["events"]
            markers += row["markers"]
            if progress is not None:
                progress(PruneResult(events, markers))
            if row["events"] < batch_size:
                return PruneResult(events, markers)
