"""Consumer queries whose cost must not grow with the event log: their plans, checked."""

from __future__ import annotations

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
