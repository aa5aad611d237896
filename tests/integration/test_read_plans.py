"""Consumer queries whose cost must not grow with the event log: their plans, checked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from dispatch_aio._sql import queries

pytestmark = pytest.mark.anyio

# Three types, many rows each: enough that an index range beats reading the table.
FILL = """
INSERT INTO dispatcher_event (
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, payload, xid, position
)
SELECT 'evt_' || i, (ARRAY['credit.locked', 'credit.reserved', 'credit.released'])[i % 3 + 1],
       1, 'tnt_tests', 'tests', 'per_' || (i % 97), 'system:tests', now(), '{}', '0', 0
FROM generate_series(1, 3000) AS i
"""


async def test_horizon_check_reads_the_last_index_entry_per_type(
    dispatch_pool: asyncpg.Pool,
) -> None:
    # The consumer runs this at every start. It once sorted every event of its types
    # (an ORDER BY that named the bigint output column): 0.5 s on a million-row log.
    query = queries("public").consumer_horizon_check
    async with dispatch_pool.acquire() as conn:
        for _ in range(3):  # three transactions: three xids
            await conn.execute(FILL.replace("'evt_' || i", "'evt_' || i || '_' || txid_current()"))
        await conn.execute("ANALYZE dispatcher_event")
        await conn.execute(f"PREPARE horizon_check AS {query}")
        # With sorting priced out, a plan that cannot read the index in order still
        # sorts: the plan must not need to.
        await conn.execute("SET enable_sort = off")
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            plan = "\n".join(
                row[0]
                for row in await conn.fetch(
                    "EXPLAIN EXECUTE horizon_check(ARRAY['credit.locked', 'credit.released'], 'c')"
                )
            )
            assert "Sort" not in plan, plan
            assert "Backward" in plan, plan
        row = await conn.fetchrow(query, ["credit.locked", "credit.released"], "c")
        expected = await conn.fetchval(
            "SELECT max(xid::text::bigint) FROM dispatcher_event "
            "WHERE event_type IN ('credit.locked', 'credit.released')"
        )
        assert row["max_event_xid"] == expected
        assert row["next_xid"] > expected


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


FETCH_ARGS = (
    ["credit.locked", "credit.reserved"],  # types
    [0],  # frontier xid per stream
    [0],  # frontier position per stream
    [None],  # partition mask per stream: all
    [],  # watched: stream, xid, position
    [],
    [],
    1000,  # limit
    "c",  # consumer
    [],  # floors per (stream, partition): none
    [],
)


async def test_fetch_probes_markers_per_row_read(dispatch_pool: asyncpg.Pool) -> None:
    # Whether a row read is handled is a probe of the marker's primary key per row. The
    # read's plan is generic and kept for the connection's life; planned while the
    # markers table looked small (a new consumer, or a TRUNCATE), an EXISTS became a
    # hashed subplan that read every marker of the consumer on every read.
    query = queries("public").consumer_fetch_streams
    async with dispatch_pool.acquire() as conn:
        await conn.execute(FILL)
        await conn.execute("ANALYZE dispatcher_event")
        await conn.execute("TRUNCATE dispatcher_dedup, dispatcher_attempt")
        await conn.execute(
            "INSERT INTO dispatcher_dedup (consumer, event_id, outcome) "
            "SELECT 'c', 'evt_' || i, 'handled' FROM generate_series(2, 3000, 2) AS i"
        )
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        statement = await conn.prepare(query)
        [plan] = json.loads(
            await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) EXECUTE {statement.get_name()}("
                "ARRAY['credit.locked', 'credit.reserved'], ARRAY[0]::bigint[], "
                "ARRAY[0]::bigint[], ARRAY[NULL]::bytea[], '{}'::bigint[], '{}'::bigint[], "
                "'{}'::bigint[], 1000, 'c', '{}'::bigint[], '{}'::bigint[])"
            )
        )
        probes = [
            node
            for node in _plan_nodes(plan["Plan"])
            if "dispatcher_dedup" in (node.get("Relation Name"), node.get("Index Name"))
        ]
        assert probes, plan
        for node in probes:
            assert "event_id" in node.get("Index Cond", ""), json.dumps(node, indent=1)
        rows = await statement.fetch(*FETCH_ARGS)
        read = [r for r in rows if r["kind"] == 1]
        assert len(read) == 1000
        marked = {f"evt_{i}" for i in range(2, 3001, 2)}
        assert all(r["handled"] == (r["event_id"] in marked) for r in read)
        assert any(r["handled"] for r in read)
        assert not all(r["handled"] for r in read)
