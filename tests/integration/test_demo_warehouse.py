"""The demo's warehouse counts what committed, not how often its handler ran.

A consumer runs a handler at least once; only writes through its connection commit
exactly once. Here a replay's connection is lost while its outcome commits: the
outcome rolls back and the replay runs again. A warehouse that counted its handler's
runs in memory counted that event twice.
"""

from __future__ import annotations

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

        async with pool.acquire() as holder, holder.transaction():
            # The event's marker row, held: the replay's outcome statement waits on it.
            await holder.execute(
                "SELECT 1 FROM dispatcher_dedup WHERE consumer = $1 AND event_id = $2 FOR UPDATE",
                WAREHOUSE,
                poisoned.event_id,
            )
            holder_pid = holder.get_server_pid()

            async def waiting() -> list[int]:
                rows = await pool.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    holder_pid,
                )
                return [r["pid"] for r in rows]

            await dead_letters.replay(letter.dead_letter_id, replayed_by=OPERATOR)
            await eventually(waiting, within=10, what="the replay's outcome to wait")
            # Its connection dies there: the outcome rolls back, the replay runs again.
            [pid] = await waiting()
            await pool.execute("SELECT pg_terminate_backend($1)", pid)

            async def waits_again() -> bool:
                return bool(set(await waiting()) - {pid})

            await eventually(waits_again, within=10, what="the replay to run again")
        await eventually(lambda: warehouse.stats.replayed == 1, within=10, what="the replay")
        await warehouse.wait_idle()

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
