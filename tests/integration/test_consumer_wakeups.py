"""What the consumer does between events: which reads it makes, which connections it
opens before work arrives (consumer groups scaling, issue 11)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio


async def test_with_notifications_up_a_finished_group_reads_nothing_again(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    # One event per group: a read after every group would be a read per event. With
    # LISTEN up, new events announce themselves: one read serves the whole backlog.
    events = 40
    consumer = Consumer(
        dispatch_pool, name="wakeups", concurrency=1, max_group=1, poll_interval=60.0
    )
    handled: list[str] = []

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        handled.append(event.event_id)

    async with consumer:
        await eventually(
            lambda: consumer.listener is not None and consumer.listener.connected,
            within=10,
            what="LISTEN up",
        )
        before = consumer.stats.fetches
        await dispatcher.publish_many(
            [
                {
                    "event_type": "credit.locked",
                    "payload": locked_payload(),
                    "subject": uid("per"),
                    "actor": "system:tests",
                }
                for _ in range(events)
            ]
        )
        await eventually(lambda: consumer.stats.handled == events, within=30, what="the backlog")
        assert consumer.stats.groups_committed == events
        assert consumer.stats.fetches - before < events // 4
        # Idle is still found at once: the last group wakes the reader.
        await asyncio.wait_for(consumer.wait_idle(), 10)


async def test_without_notifications_a_finished_group_reads_again(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    # Polling only: nothing announces new events, so the end of a group is the moment to
    # look for them (not the poll interval, here far away).
    consumer = Consumer(
        dispatch_pool, name="polling", concurrency=1, max_group=1, poll_interval=60.0, listen=False
    )
    handled: list[str] = []
    running, finish = asyncio.Event(), asyncio.Event()

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        if not handled:
            running.set()
            await finish.wait()
        handled.append(event.event_id)

    def spec() -> dict[str, object]:
        return {
            "event_type": "credit.locked",
            "payload": locked_payload(),
            "subject": uid("per"),
            "actor": "system:tests",
        }

    await dispatcher.publish_many([spec()])
    async with consumer:
        await asyncio.wait_for(running.wait(), 10)
        # Published while the first group runs: its end is what makes them read.
        await dispatcher.publish_many([spec() for _ in range(3)])
        finish.set()
        await eventually(lambda: len(handled) == 4, within=30, what="events found by reads")


async def test_the_workers_connections_are_open_before_work_arrives(
    dispatch_dsn: str,
) -> None:
    concurrency = 4
    pool = await asyncpg.create_pool(dispatch_dsn, min_size=1, max_size=concurrency + 2)
    try:
        consumer = Consumer(pool, name="warm", concurrency=concurrency, poll_interval=60.0)

        @consumer.on("credit.locked")
        async def on_locked(event: Event) -> None:
            return None

        async with consumer:
            # The read loop's and the LISTEN connection, and one per worker.
            await eventually(
                lambda: pool.get_size() == concurrency + 2, within=10, what="connections"
            )
            assert consumer.stats.handled == 0
    finally:
        await pool.close()
