"""The consumer's main path: handle, commit with the handler's writes, stop cleanly."""

from __future__ import annotations

import asyncpg
import pytest

from dispatch_aio import ConfigurationError, Consumer, ConsumerState, Dispatcher, Event

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio


async def test_handles_each_event_once_with_handler_writes(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await dispatch_pool.execute("CREATE TABLE seen (event_id text PRIMARY KEY, subject text)")
    subjects = [uid("per") for _ in range(5)]
    published = []
    for i in range(40):
        env = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=subjects[i % 5], actor="system:tests"
        )
        published.append(env.event_id)

    consumer = Consumer(dispatch_pool, name="coaching", poll_interval=0.2, concurrency=4)

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO seen VALUES ($1, $2)", event.event_id, event.subject)

    async with consumer:
        await consumer.wait_idle()
        assert consumer.stats.handled == 40
    rows = await dispatch_pool.fetch("SELECT event_id FROM seen")
    assert sorted(r["event_id"] for r in rows) == sorted(published)
    dedup = await dispatch_pool.fetchval(
        "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'coaching'"
    )
    assert dedup == 40
    cursor = await dispatch_pool.fetchrow(
        "SELECT last_position FROM dispatcher_cursor WHERE consumer = 'coaching'"
    )
    top = await dispatch_pool.fetchval("SELECT max(position) FROM dispatcher_event")
    assert cursor["last_position"] == top


async def test_a_small_pool_caps_the_workers_instead_of_starving_them(
    dispatch_dsn: str, dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await asyncpg.create_pool(dispatch_dsn, min_size=1, max_size=4)
    try:
        consumer = Consumer(pool, name="small", poll_interval=0.2, concurrency=16)
        seen: list[str] = []

        @consumer.on("credit.locked")
        async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT 1")
            seen.append(event.event_id)

        for _ in range(30):
            await dispatcher.publish(
                "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
            )
        with caplog.at_level("WARNING", logger="dispatch_aio.consumer"):
            async with consumer:
                await consumer.wait_idle()
        assert len(seen) == 30
        # One connection for the fetch loop, one held for LISTEN (no dsn/listen_connect).
        assert "running 2 workers instead of concurrency=16" in caplog.text
        assert "the pool has 4 connections" in caplog.text
    finally:
        await pool.close()


@pytest.mark.parametrize(("size", "listen", "needed"), [(1, True, 3), (2, True, 3), (1, False, 2)])
async def test_a_pool_that_cannot_make_progress_is_refused_at_start(
    dispatch_dsn: str, size: int, listen: bool, needed: int
) -> None:
    pool = await asyncpg.create_pool(dispatch_dsn, min_size=1, max_size=size)
    try:
        consumer = Consumer(pool, name="starved", concurrency=4, listen=listen)

        @consumer.on("credit.locked")
        async def on_locked(event: Event) -> None:
            pass

        shown = "1 connection" if size == 1 else f"{size} connections"
        with pytest.raises(ConfigurationError, match=f"cannot run on a pool of {shown}:") as caught:
            await consumer.start()
        message = str(caught.value)
        assert "\n" not in message
        assert f"give the pool at least {needed}" in message
        assert consumer.state is ConsumerState.CLOSED
        assert pool.get_idle_size() == pool.get_size()  # nothing left holding a connection
    finally:
        await pool.close()


async def test_a_deadlock_is_not_a_handler_attempt(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await dispatch_pool.execute("CREATE TABLE seen (event_id text)")
    consumer = Consumer(dispatch_pool, name="locks", poll_interval=0.2, retry_delays=())
    deadlocks = [1]

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO seen VALUES ($1)", event.event_id)
        if deadlocks:
            deadlocks.pop()
            raise asyncpg.DeadlockDetectedError("deadlock detected")

    await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    async with consumer:
        await consumer.wait_idle()
    # No retry counted and no dead letter, even with no retries allowed: the group ran again.
    assert consumer.stats.handled == 1
    assert consumer.stats.retried == 0
    assert consumer.stats.dead_lettered == 0
    assert await dispatch_pool.fetchval("SELECT count(*) FROM seen") == 1


async def test_a_trickle_costs_one_read_per_notification_and_cursors_still_advance(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    """A finished group makes no row readable: it must not cost a read of its own (that
    doubled the reads of a steady trickle). The stored cursor still follows, and
    wait_idle still returns once everything published before it is handled."""
    consumer = Consumer(dispatch_pool, name="trickle", poll_interval=30.0)
    handled: list[str] = []

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        handled.append(event.event_id)

    events = 20
    async with consumer:
        await consumer.wait_idle()
        fetches_before = consumer.stats.fetches
        for i in range(events):
            await dispatcher.publish(
                "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
            )
            # One at a time: the next is published once this one's outcome is committed.
            await eventually(lambda n=i + 1: consumer.stats.handled == n, within=10, what="handled")
        reads = consumer.stats.fetches - fetches_before
        top = await dispatch_pool.fetchval("SELECT max(position) FROM dispatcher_event")

        async def cursor_at_top() -> bool:
            stored = await dispatch_pool.fetchval(
                "SELECT last_position FROM dispatcher_cursor WHERE consumer = 'trickle'"
            )
            return bool(stored == top)

        await eventually(cursor_at_top, within=10, what="the stored cursor at the top")
        await consumer.wait_idle()
    # One read per notification, and a few more at most (a notification that came during
    # a read). With a read per finished group as well, it would be twice as many.
    assert reads <= events + 3, f"{reads} reads for {events} events, one at a time"
    assert len(handled) == events
