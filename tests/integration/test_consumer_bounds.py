"""Bounded memory behind a stuck event, status naming it, and attempts that survive a
restart (issue items 8, 15)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event
from dispatch_aio._status import consumer_status

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio


async def test_memory_behind_a_stuck_event_is_capped_and_status_names_the_event(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    cap, behind = 20, 300
    release = asyncio.Event()
    head_subject = uid("per")
    consumer = Consumer(
        dispatch_pool,
        name="stuck",
        poll_interval=0.05,
        batch_size=10,
        concurrency=4,
        max_buffered=cap,
        handler_timeout=None,
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        if event.subject == head_subject:
            await release.wait()

    head = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=head_subject, actor="system:tests"
    )
    for _ in range(behind // 50):
        await dispatcher.publish_many(
            [
                {
                    "event_type": "credit.locked",
                    "payload": locked_payload(),
                    "subject": uid("per"),
                    "actor": "system:tests",
                }
                for _ in range(50)
            ]
        )
    async with consumer:
        # (Events sharing the stuck event's group wait with it: not all of the cap runs.)
        await eventually(lambda: consumer.stats.handled >= cap // 2, within=10, what="the cap")
        fetches = consumer.stats.fetches
        # Reading goes on looking, but takes nothing more of the stuck type.
        await eventually(
            lambda: consumer.stats.fetches >= fetches + 5, within=10, what="more reads"
        )
        assert consumer.buffered() <= 2 * cap
        assert consumer.stats.handled <= 2 * cap
        report = await consumer_status(dispatch_pool, consumer="stuck")
        [health] = report.consumers
        assert health.held_by_event_id == head.event_id
        assert health.held_for_seconds is not None
        assert health.lag >= behind
        release.set()
        await asyncio.wait_for(consumer.wait_idle(), 30)
        assert consumer.stats.handled == behind + 1
    [health] = (await consumer_status(dispatch_pool, consumer="stuck")).consumers
    assert health.held_by_event_id is None


async def test_a_restart_continues_the_attempt_count(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    calls: list[int] = []

    def make(retry_delays: tuple[float, ...]) -> Consumer:
        consumer = Consumer(
            dispatch_pool,
            name="crashy",
            poll_interval=0.05,
            retry_delays=retry_delays,
            drain_timeout=1,
        )

        @consumer.on("credit.locked")
        async def on_locked(event: Event) -> None:
            calls.append(event.attempt)
            raise RuntimeError("poison")

        return consumer

    event = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    # Two failures, then the process goes away while the third waits (a minute away).
    async with make((0.01, 60)):
        await eventually(lambda: len(calls) == 2, within=10, what="two attempts")

        async def two_stored() -> bool:
            stored = await dispatch_pool.fetchval(
                "SELECT attempts FROM dispatcher_attempt WHERE consumer = 'crashy'"
            )
            return bool(stored == 2)

        # The handler runs before its failure is recorded: await the second record.
        await eventually(two_stored, within=10, what="the second attempt stored")
    # The next process has one retry: attempt 3 is its first, and the last there is.
    async with make((0.01,)) as again:
        await asyncio.wait_for(again.wait_idle(), 10)
    assert calls == [1, 2, 3]
    letter = await dispatch_pool.fetchrow(
        "SELECT event_id, attempts FROM dispatcher_dead_letter WHERE consumer = 'crashy'"
    )
    assert letter["event_id"] == event.event_id
    assert letter["attempts"] == 3
