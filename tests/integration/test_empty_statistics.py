"""Probes take their index even when the planner believes the table empty.

A table vacuumed or analyzed while empty (by hand, or by autovacuum after a prune) has
statistics that make a sequential scan look free. A plan made then reads the whole
table for every row, and is kept as the table grows: the insert trigger's probe of a
subject's later events, once per event published; the read's probes of markers and
attempts, once per row read. Counted with the transaction's own statistics
(``pg_stat_xact_user_tables``): no sequential scan at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from dispatch_aio import Dispatcher
from dispatch_aio._consume.horizon import Stream
from dispatch_aio._consume.streams_store import StreamsStore
from dispatch_aio.pytest_plugin import TestPostgres

from .helpers import locked_payload, uid

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fresh_dsn(dispatch_postgres: TestPostgres) -> AsyncIterator[str]:
    """A database of its own: the statistics of its tables are this test's to set."""
    name = await dispatch_postgres.create_database()
    yield dispatch_postgres.dsn(name)
    await dispatch_postgres.drop_database(name)


async def seq_scans(conn: asyncpg.Connection, table: str) -> int:
    """Sequential scans of ``table`` in the current transaction so far."""
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_xact_user_tables WHERE relname = $1",
            table,
        )
    )


def specs(n: int, subjects: list[str]) -> list[dict[str, object]]:
    return [
        {
            "event_type": "credit.locked",
            "payload": locked_payload(),
            "subject": subjects[i % len(subjects)],
            "actor": "system:tests",
        }
        for i in range(n)
    ]


async def test_publishing_into_a_table_analyzed_empty_probes_the_index(fresh_dsn: str) -> None:
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        await pool.execute("VACUUM ANALYZE dispatcher_event")
        subjects = [uid("per") for _ in range(20)]
        dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
        async with pool.acquire() as conn, conn.transaction():
            await dispatcher.publish_many(specs(200, subjects), conn=conn)  # type: ignore[arg-type]
            await dispatcher.publish_many(specs(200, subjects), conn=conn)  # type: ignore[arg-type]
            # Old main: 400, one scan of the whole table per event inserted.
            assert await seq_scans(conn, "dispatcher_event") == 0
            assert await conn.fetchval("SELECT count(*) FROM dispatcher_event") == 400
    finally:
        await pool.close()


PROBED = ("dispatcher_dedup", "dispatcher_attempt")


class ReadCounting(asyncpg.Connection):
    """Counts, inside the read's own transaction, the sequential scans its statement made."""

    read_scans: list[dict[str, int]]

    async def fetch(self, query: str, *args: object, **kwargs: object) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await super().fetch(query, *args, **kwargs)  # type: ignore[arg-type]
        if self.is_in_transaction():  # only the read runs in a transaction here
            scans = {table: await seq_scans(self, table) for table in PROBED}
            self.__dict__.setdefault("read_scans", []).append(scans)
        return rows


async def test_the_read_probes_markers_and_attempts_by_index_after_they_were_analyzed_empty(
    fresh_dsn: str,
) -> None:
    consumer = "coaching"
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=2)
    assert pool is not None
    conn = await asyncpg.connect(fresh_dsn, connection_class=ReadCounting)
    try:
        for table in PROBED:
            await pool.execute(f"VACUUM ANALYZE {table}")
        dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
        published = await dispatcher.publish_many(specs(300, [uid("per") for _ in range(30)]))  # type: ignore[arg-type]
        ids = [e.event_id for e in published]
        store = StreamsStore("public", consumer, ["credit.locked"])
        # The read's plan is made, and kept on this connection, while both tables are empty.
        first = await store.fetch(conn, [(Stream(frontier=(0, 0)).plan(), None)], 300)
        assert not any(row["handled"] for row in first.streams[0].range_rows or [])
        await pool.execute(
            "INSERT INTO dispatcher_dedup (consumer, event_id, outcome)"
            " SELECT $1, unnest($2::text[]), 'handled'",
            consumer,
            ids,
        )
        await pool.execute(
            "INSERT INTO dispatcher_attempt (consumer, event_id, attempts)"
            " SELECT $1, unnest($2::text[]), 2",
            consumer,
            ids,
        )
        again = await store.fetch(conn, [(Stream(frontier=(0, 0)).plan(), None)], 300)
        rows = again.streams[0].range_rows or []
        assert sorted(row["event_id"] for row in rows) == sorted(ids)
        assert all(row["handled"] and row["attempts"] == 2 for row in rows)
        # Old main: 300 scans of each table, one per row read.
        assert conn.read_scans[-1] == {"dispatcher_dedup": 0, "dispatcher_attempt": 0}
    finally:
        await conn.close()
        await pool.close()
