"""consumer_status: cursors, lag, dead letters and the transactions holding readers back."""

from __future__ import annotations

import logging

import anyio
import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event
from dispatch_aio._consume.leases_store import LeaseStore
from dispatch_aio._status import consumer_status

from .helpers import locked_payload, uid

pytestmark = pytest.mark.anyio


async def test_status_reports_lag_dead_letters_and_horizon_holders(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_dsn: str
) -> None:
    consumer = Consumer(dispatch_pool, name="projector", poll_interval=0.1, retry_delays=())

    @consumer.on("credit.locked")
    async def handle(event: Event) -> None:
        if event.payload["locked_credits"] == 13:
            raise RuntimeError("unlucky")

    await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:t"
    )
    await dispatcher.publish(
        "credit.locked", locked_payload(locked_credits=13), subject=uid("per"), actor="system:t"
    )
    async with consumer:
        await consumer.wait_idle()

    # An open transaction with an xid holds every later commit back from consumers.
    holder = await asyncpg.connect(dispatch_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("CREATE TEMP TABLE hold (x int)")
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        for _ in range(3):
            await dispatcher.publish(
                "credit.locked", locked_payload(), subject=uid("per"), actor="system:t"
            )
        report = await consumer_status(dispatch_pool, horizon_warning_after=0)
        await tx.rollback()
    finally:
        await holder.close()

    [row] = [r for r in report.consumers if r.consumer == "projector"]
    assert row.event_type == "credit.locked"
    assert row.lag == 3
    assert row.dead_letters == 1
    assert row.oldest_pending_age_seconds is not None
    assert row.oldest_pending_age_seconds >= 0
    assert holder_pid in {h.pid for h in report.horizon_holders}
    assert any(str(holder_pid) in w for w in report.warnings)

    quiet = await consumer_status(dispatch_pool, consumer="nobody")
    assert quiet.consumers == []


async def test_a_running_consumer_warns_about_a_transaction_holding_it_back(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_dsn: str
) -> None:
    warned = anyio.Event()
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "wait behind transaction" in record.getMessage():
                records.append(record)
                warned.set()

    catch = Catch(level=logging.WARNING)
    logging.getLogger("dispatch_aio.consumer").addHandler(catch)
    consumer = Consumer(
        dispatch_pool, name="projector", poll_interval=0.1, horizon_warning_after=0.2
    )

    @consumer.on("credit.locked")
    async def handle(event: Event) -> None:
        pass

    holder = await asyncpg.connect(dispatch_dsn)
    try:
        async with consumer:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("CREATE TEMP TABLE hold (x int)")
            holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
            await dispatcher.publish(
                "credit.locked", locked_payload(), subject=uid("per"), actor="system:t"
            )
            with anyio.fail_after(10):
                await warned.wait()
            await tx.rollback()
            await consumer.wait_idle()
            assert consumer.stats.handled == 1
    finally:
        logging.getLogger("dispatch_aio.consumer").removeHandler(catch)
        await holder.close()
    assert records[0].__dict__["pid"] == holder_pid
    assert records[0].__dict__["consumer"] == "projector"


async def test_status_shows_the_backlog_each_process_reported(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    """Per process of a group, the sum of the backlogs it stored on its leases (only
    held ones: a free partition's stale report belongs to nobody)."""
    name = uid("grp")
    consumer = Consumer(dispatch_pool, name=name, poll_interval=0.1)

    @consumer.on("credit.locked")
    async def handle(event: Event) -> None:
        pass

    await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:t"
    )
    async with consumer:  # its cursors and lease rows; it leaves on stop
        await consumer.wait_idle()
    first, second = (LeaseStore("public", name, member_id=uid("m")) for _ in range(2))
    async with dispatch_pool.acquire() as conn:
        for store, parts in ((first, range(0, 128)), (second, range(128, 255))):
            await store.join(conn)
            assert len(await store.acquire(conn, parts)) == len(parts)
        await first.report_backlog(conn, {0: 5, 1: 7}, notify=False)
        await second.report_backlog(conn, {200: 11}, notify=False)
        # Partition 255 is nobody's: whatever it last carried is not counted.
        await conn.execute(
            "UPDATE dispatcher_lease SET backlog = 99 WHERE consumer = $1 AND partition = 255",
            name,
        )
    report = await consumer_status(dispatch_pool, consumer=name)
    [group] = report.groups
    backlog = {m.member_id: m.backlog for m in group.members}
    assert backlog == {first.member_id: 12, second.member_id: 11}
    assert group.unowned == [255]
