"""The demo's warehouse counts what committed, not how often its handler ran.

A consumer runs a handler at least once; only writes through its connection commit
exactly once. Here a replay's request is read a second time by a read whose snapshot
was taken before the first run of that replay committed and whose answer arrived after
it (a read on the wire while the replay finished, as a loaded machine interleaves it):
the replay runs again, and only the outcome statement finds it done. A warehouse that
counted its handler's runs in memory counted that event twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from dispatch_aio import DeadLetters, Dispatcher, Registry
from dispatch_aio.demo.consumers import _Observed, _warehouse
from dispatch_aio.demo.database import _DOMAIN_TABLES, _WAREHOUSE_CHECK
from dispatch_aio.demo.domain import ACTOR, OPERATOR, PRODUCER, TENANT_ID, WAREHOUSE
from dispatch_aio.demo.summary import WarehouseSummary

from .helpers import eventually, example, uid

pytestmark = pytest.mark.anyio


async def test_a_replay_run_twice_is_loaded_once(dispatch_pool: asyncpg.Pool) -> None:
    pool = dispatch_pool
    await pool.execute(_DOMAIN_TABLES.format(schema='"public"'))
    registry = Registry.load()
    dispatcher = Dispatcher(pool, producer=PRODUCER, tenant_id=TENANT_ID, registry=registry)
    other = await dispatcher.publish(
        "credit.reserved", example("credit.reserved"), subject=uid("per"), actor=ACTOR
    )
    poisoned = await dispatcher.publish(
        "credit.reserved", example("credit.reserved"), subject=uid("per"), actor=ACTOR
    )
    observed = _Observed()
    warehouse = _warehouse(pool, "public", registry, observed, {poisoned.event_id})
    dead_letters = DeadLetters(pool)
    async with warehouse:
        await warehouse.wait_idle()
        [letter] = (await dead_letters.list(WAREHOUSE)).items
        observed.warehouse_fixed = True

        # The second read that finds the replay pending answers only once the replay
        # has finished: its snapshot is from before, its rows are handled after.
        store = warehouse._fetcher._store  # type: ignore[attr-defined]
        fetch_replays = store.fetch_replays
        reads = 0
        stale_read = asyncio.Event()
        replay_done = asyncio.Event()

        async def late_answer(conn: asyncpg.Connection, limit: int) -> Any:
            nonlocal reads
            rows = await fetch_replays(conn, limit)
            if any(r["dead_letter_id"] == letter.dead_letter_id for r in rows):
                reads += 1
                if reads == 2:
                    stale_read.set()
                    await replay_done.wait()
            return rows

        store.fetch_replays = late_answer

        async with pool.acquire() as holder, holder.transaction():
            # The event's marker row, held: the replay's outcome statement waits on it
            # while the dead letter still reads as pending to everyone else.
            await holder.execute(
                "SELECT 1 FROM dispatcher_dedup WHERE consumer = $1 AND event_id = $2 FOR UPDATE",
                WAREHOUSE,
                poisoned.event_id,
            )
            holder_pid = holder.get_server_pid()

            async def outcome_waits() -> bool:
                blocked = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    holder_pid,
                )
                return bool(blocked)

            await dead_letters.replay(letter.dead_letter_id, replayed_by=OPERATOR)
            await eventually(outcome_waits, within=10, what="the replay's outcome to wait")
            idle = asyncio.create_task(warehouse.wait_idle())  # reads replays again
            await asyncio.wait_for(stale_read.wait(), 10)
        await eventually(lambda: warehouse.stats.replayed == 1, within=10, what="the replay")
        replay_done.set()
        await asyncio.wait_for(idle, 10)

    # The control: the handler did run twice for the replayed event.
    assert observed.warehouse_runs[poisoned.event_id] == 3 + 2
    assert (await dead_letters.get(letter.dead_letter_id)).replay_status == "succeeded"
    check = WarehouseSummary.of(
        await pool.fetch(_WAREHOUSE_CHECK.format(schema='"public"'), PRODUCER)
    )
    assert check.problems() == ()
    assert check.ok
    assert check.loaded_by_type == check.published_by_type == {"credit.reserved": 2}
    loads = dict(await pool.fetch("SELECT event_id, loads FROM warehouse_load"))
    assert loads == {other.event_id: 1, poisoned.event_id: 1}
