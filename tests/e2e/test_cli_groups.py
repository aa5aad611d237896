"""``dispatch-aio status`` shows a consumer's processes and partitions;
``dispatch-aio consumers forget`` removes a retired consumer, never a running one."""

from __future__ import annotations

import json

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event

from ..integration.helpers import eventually, locked_payload, uid
from .test_cli_base import assert_error, cli

pytestmark = pytest.mark.anyio


async def test_status_shows_the_group_and_forget_refuses_a_running_consumer(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_dsn: str
) -> None:
    def process() -> Consumer:
        consumer = Consumer(dispatch_pool, name="grouped", poll_interval=0.1, lease_timeout=3)

        @consumer.on("credit.locked")
        async def handle(event: Event) -> None:
            pass

        return consumer

    await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:t"
    )
    async with process() as first, process():
        await first.wait_idle()

        async def split() -> bool:
            owners = await dispatch_pool.fetch(
                "SELECT DISTINCT owner FROM dispatcher_lease WHERE consumer = 'grouped' "
                "AND owner IS NOT NULL"
            )
            return len(owners) == 2

        await eventually(split, within=20, what="two owners")
        run = await cli("status", "--json", dsn=dispatch_dsn)
        assert run.code == 0, run
        [group] = [g for g in json.loads(run.out)["groups"] if g["consumer"] == "grouped"]
        assert len(group["members"]) == 2
        assert sorted(p for m in group["members"] for p in m["partitions"]) == list(range(256))
        assert group["unowned"] == []
        assert all(m["host"] and m["pid"] > 0 for m in group["members"])
        assert all(m["backlog"] >= 0 for m in group["members"])
        table = await cli("status", dsn=dispatch_dsn)
        assert "processes of grouped:" in table.out
        assert "BACKLOG" in table.out
        assert "unowned" not in table.out

        refused = await cli("consumers", "forget", "grouped", "--yes", dsn=dispatch_dsn)
        assert_error(refused, 1, "live process")
        unconfirmed = await cli("consumers", "forget", "grouped", dsn=dispatch_dsn)
        assert_error(unconfirmed, 2, "--yes")
    # Both left on stop: nobody live any more.
    done = await cli("consumers", "forget", "grouped", "--yes", dsn=dispatch_dsn)
    assert done.code == 0, done
    assert "forgot grouped" in done.out
    for table_name in ("dispatcher_cursor", "dispatcher_dedup", "dispatcher_lease"):
        left = await dispatch_pool.fetchval(
            f"SELECT count(*) FROM {table_name} WHERE consumer = 'grouped'"
        )
        assert left == 0, table_name
    after = json.loads((await cli("status", "--json", dsn=dispatch_dsn)).out)
    assert "grouped" not in {c["consumer"] for c in after["consumers"]}
