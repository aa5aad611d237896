"""dispatch_aio.testing used the way an application's test suite would use it."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from dispatch_aio import Consumer, ConsumerState, Dispatcher, Event, LifecycleError, Registry
from dispatch_aio.testing import DrainResult, drain, instant_retries, published_events

from .helpers import locked_payload, uid

pytestmark = pytest.mark.anyio


def test_instant_retries_are_zero_delays() -> None:
    assert instant_retries() == {"retry_delays": (0.0, 0.0, 0.0)}
    assert instant_retries(1) == {"retry_delays": (0.0,)}


async def test_drain_starts_handles_and_closes_a_new_consumer(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_registry: Registry
) -> None:
    await dispatch_pool.execute("CREATE TABLE seen (event_id text PRIMARY KEY)")
    published = [
        await dispatcher.publish(
            "credit.locked", locked_payload(), subject=uid("crr"), actor="system:tests"
        )
        for _ in range(5)
    ]
    consumer = Consumer(dispatch_pool, name="projector", registry=dispatch_registry)

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO seen VALUES ($1)", event.event_id)

    result = await drain(consumer)

    assert result == DrainResult(handled=5)
    assert consumer.state is ConsumerState.CLOSED
    seen = {r["event_id"] for r in await dispatch_pool.fetch("SELECT event_id FROM seen")}
    assert seen == {e.event_id for e in published}


async def test_drain_of_a_running_consumer_counts_only_this_drain(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_registry: Registry
) -> None:
    handled: list[str] = []
    consumer = Consumer(dispatch_pool, name="projector", registry=dispatch_registry)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        handled.append(event.event_id)

    async with consumer:
        await dispatcher.publish(
            "credit.locked", locked_payload(), subject=uid("crr"), actor="system:tests"
        )
        first = await drain(consumer)
        second_event = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=uid("crr"), actor="system:tests"
        )
        second = await drain(consumer)
        assert consumer.state is ConsumerState.RUNNING
        nothing = await drain(consumer)

    assert first.handled == 1
    assert second == DrainResult(handled=1)
    assert nothing == DrainResult()
    assert handled[-1] == second_event.event_id
    assert len(handled) == 2


async def test_drain_follows_events_published_by_handlers(
    dispatch_pool: asyncpg.Pool, dispatch_registry: Registry
) -> None:
    # Each handled event publishes the next one through its own transaction, five deep:
    # a single wait_idle would return after the first link of the chain.
    dispatcher = Dispatcher(
        dispatch_pool, producer="tests", tenant_id="tnt_tests", registry=dispatch_registry
    )
    subject = uid("crr")
    consumer = Consumer(dispatch_pool, name="chain", registry=dispatch_registry)

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        depth = event.payload["locked_credits"]
        if depth < 5:
            await dispatcher.publish(
                "credit.locked",
                locked_payload(locked_credits=depth + 1),
                subject=subject,
                actor="system:tests",
                causation_id=event.event_id,
                conn=conn,
            )

    await dispatcher.publish(
        "credit.locked", locked_payload(locked_credits=1), subject=subject, actor="system:tests"
    )
    result = await drain(consumer)

    assert result.handled == 5
    chain = await published_events(dispatch_pool, subject=subject)
    assert [e.payload["locked_credits"] for e in chain] == [1, 2, 3, 4, 5]


async def test_instant_retries_then_success(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_registry: Registry
) -> None:
    attempts: list[int] = []
    consumer = Consumer(
        dispatch_pool, name="flaky", registry=dispatch_registry, **instant_retries()
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        attempts.append(event.attempt)
        if event.attempt < 3:
            raise RuntimeError("not yet")

    await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("crr"), actor="system:tests"
    )
    with anyio.fail_after(10):  # real delays (1 s + 5 s, plus jitter) would not fit
        result = await drain(consumer)

    assert result == DrainResult(handled=1, retried=2)
    assert attempts == [1, 2, 3]


async def test_instant_retries_then_dead_letter(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_registry: Registry
) -> None:
    consumer = Consumer(
        dispatch_pool, name="broken", registry=dispatch_registry, **instant_retries(2)
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        raise ValueError("this handler never works")

    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("crr"), actor="system:tests"
    )
    result = await drain(consumer)

    assert result == DrainResult(retried=2, dead_lettered=1)
    row = await dispatch_pool.fetchrow(
        "SELECT event_id, error_type, attempts FROM dispatcher_dead_letter WHERE consumer = $1",
        "broken",
    )
    assert dict(row) == {"event_id": envelope.event_id, "error_type": "ValueError", "attempts": 3}


async def test_a_second_consumer_of_the_same_name_finds_nothing_to_do(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_registry: Registry
) -> None:
    await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("crr"), actor="system:tests"
    )

    def build() -> Consumer:
        consumer = Consumer(dispatch_pool, name="projector", registry=dispatch_registry)

        @consumer.on("credit.locked")
        async def on_locked(event: Event) -> None:
            pass

        return consumer

    assert (await drain(build())).handled == 1
    assert await drain(build()) == DrainResult()


async def test_drain_times_out_and_aborts_a_consumer_it_started(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_registry: Registry
) -> None:
    cancelled = anyio.Event()
    consumer = Consumer(dispatch_pool, name="stuck", registry=dispatch_registry)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("crr"), actor="system:tests"
    )
    with pytest.raises(TimeoutError, match="1 event"):
        await drain(consumer, timeout=0.5)

    assert cancelled.is_set()
    assert consumer.state is ConsumerState.CLOSED
    assert await dispatch_pool.fetchval("SELECT count(*) FROM dispatcher_dedup") == 0


async def test_drain_refuses_a_closed_consumer(
    dispatch_pool: asyncpg.Pool, dispatch_registry: Registry
) -> None:
    consumer = Consumer(dispatch_pool, name="done", registry=dispatch_registry)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        pass

    await drain(consumer)
    with pytest.raises(LifecycleError, match="build a new Consumer"):
        await drain(consumer)


async def test_published_events_filters_and_keeps_position_order(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    person, other = uid("per"), uid("per")
    first = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=person, actor="system:tests"
    )
    async with dispatch_pool.acquire() as conn, conn.transaction():
        second = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=other, actor="system:tests", conn=conn
        )
        third = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=person, actor="system:tests", conn=conn
        )
        # Inside the transaction, on its connection: its own events are there already.
        assert await published_events(conn, subject=person) == [first, third]
        assert await published_events(dispatch_pool, subject=person) == [first]

    assert await published_events(dispatch_pool) == [first, second, third]
    assert await published_events(dispatch_pool, event_type="credit.locked") == [
        first,
        second,
        third,
    ]
    assert await published_events(dispatch_pool, event_type="payment.received") == []
    assert await published_events(dispatch_pool, subject=other) == [second]


async def test_published_events_leaves_out_rolled_back_publishes(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    class Abandon(Exception):
        pass

    async def publish_then_fail() -> None:
        async with dispatch_pool.acquire() as conn, conn.transaction():
            await dispatcher.publish(
                "credit.locked",
                locked_payload(),
                subject=uid("crr"),
                actor="system:tests",
                conn=conn,
            )
            raise Abandon

    with pytest.raises(Abandon):
        await publish_then_fail()

    assert await published_events(dispatch_pool) == []
