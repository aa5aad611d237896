"""consumer_status: cursors, lag, dead letters and the transactions holding readers back."""

from __future__ import annotations

import logging

import anyio
import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event
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
