"""The insert trigger takes its index even when the planner believes the table empty.

A table vacuumed or analyzed while empty (by hand, or by autovacuum after a prune) has
statistics that make a sequential scan look free. A plan made then reads the whole
table for every row, and is kept as the table grows: here, the insert trigger's probe of
a subject's later events, once per event published. Counted with the transaction's own
statistics (``pg_stat_xact_user_tables``): no sequential scan at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from dispatch_aio import Dispatcher
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
