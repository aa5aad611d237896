"""The consumer's storage calls. The only consumer module that knows SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from .._sql import queries

__all__ = ["ConsumerStore", "DeadLetterRow"]


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """What a dead letter records about one event and its failure."""

    dead_letter_id: str
    event_id: str
    event_type: str
    schema_version: int | None
    tenant_id: str | None
    subject: str | None
    envelope: str
    error_type: str
    error_message: str
    error_traceback: str | None
    attempts: int


class ConsumerStore:
    """Named queries of one consumer (name, schema, subscribed types)."""

    def __init__(self, schema: str, consumer: str, event_types: Sequence[str]) -> None:
        self.q = queries(schema)
        self.consumer = consumer
        self.event_types = list(event_types)

    async def horizon_check(self, conn: asyncpg.Connection) -> asyncpg.Record:
        """The cluster's next xid and the largest xid stored for this consumer's data."""
        return await conn.fetchrow(self.q.consumer_horizon_check, self.event_types, self.consumer)

    async def init_cursors(self, conn: asyncpg.Connection, *, from_now: bool) -> None:
        """Create missing cursors (existing ones are left where they are)."""
        await conn.execute(self.q.consumer_init_cursors, self.consumer, self.event_types, from_now)

    async def read_cursors(self, conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
        """Stored cursors by event type as (xid, position)."""
        rows = await conn.fetch(self.q.consumer_read_cursors, self.consumer, self.event_types)
        return {r["event_type"]: (r["last_xid"], r["last_position"]) for r in rows}

    async def fetch_replays(self, conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
        """Dead letters of this consumer waiting to be replayed, with their events."""
        return list(
            await conn.fetch(self.q.consumer_fetch_replays, self.consumer, self.event_types, limit)
        )

    async def record_outcomes(
        self,
        conn: asyncpg.Connection,
        event_ids: list[str],
        dead_lettered: list[str],
        event_types: list[str],
        xids: list[int],
        positions: list[int],
    ) -> set[str]:
        """Insert dedup markers; returns the ids NOT inserted (those were done elsewhere).

        ``dead_lettered`` names those of ``event_ids`` whose outcome is a dead letter;
        the others were handled.
        """
        rows = await conn.fetch(
            self.q.consumer_record_handled,
            self.consumer,
            event_ids,
            dead_lettered,
            event_types,
            xids,
            positions,
        )
        return {r[0] for r in rows}

    async def outcomes_of(self, conn: asyncpg.Connection, event_ids: list[str]) -> dict[str, str]:
        """Stored outcomes (``handled``, ``dead_lettered``) of those of ``event_ids`` with one."""
        rows = await conn.fetch(self.q.consumer_outcomes_of, self.consumer, event_ids)
        return {r["event_id"]: r["outcome"] for r in rows}

    async def replays_succeeded(
        self, conn: asyncpg.Connection, dead_letter_ids: list[str]
    ) -> set[str]:
        """Those of ``dead_letter_ids`` whose replay is recorded as succeeded."""
        rows = await conn.fetch(self.q.consumer_replays_succeeded, self.consumer, dead_letter_ids)
        return {r[0] for r in rows}

    async def record_dead_letters(
        self, conn: asyncpg.Connection, letters: Sequence[DeadLetterRow]
    ) -> None:
        """Insert dead-letter rows (in the caller's transaction)."""
        columns: list[list[Any]] = [[] for _ in range(11)]
        for d in letters:
            values = (
                d.dead_letter_id,
                d.event_id,
                d.event_type,
                d.schema_version,
                d.tenant_id,
                d.subject,
                d.envelope,
                d.error_type,
                d.error_message,
                d.error_traceback,
                d.attempts,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        await conn.execute(self.q.consumer_record_dead_letters, self.consumer, *columns)

    async def finish_replays(
        self, conn: asyncpg.Connection, dead_letter_ids: list[str]
    ) -> set[str]:
        """Mark replayed dead letters succeeded; returns those still pending until now."""
        rows = await conn.fetch(self.q.consumer_finish_replays, self.consumer, dead_letter_ids)
        return {r[0] for r in rows}

    async def record_attempt(
        self, conn: asyncpg.Connection, event_id: str, attempts: int, error: str
    ) -> None:
        """Store a failed attempt (one statement: its own transaction; not in one)."""
        await conn.execute(self.q.consumer_record_attempt, self.consumer, event_id, attempts, error)

    async def fail_replay(
        self, conn: asyncpg.Connection, dead_letter_id: str, error: str, attempts: int
    ) -> None:
        """Record that a replay failed again."""
        await conn.execute(self.q.consumer_fail_replay, dead_letter_id, error, attempts)

    async def advance_cursors(
        self, conn: asyncpg.Connection, cursors: dict[str, tuple[int, int]]
    ) -> None:
        """Move stored cursors forward (never backwards)."""
        types = list(cursors)
        await conn.execute(
            self.q.consumer_advance_cursors,
            self.consumer,
            types,
            [cursors[t][0] for t in types],
            [cursors[t][1] for t in types],
        )
