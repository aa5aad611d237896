"""What a failure means: commits that keep failing, cancelled handlers, deadlocks, bugs,
handler signals, and cancelling wait_idle (issue items 3, 4, 5, 14)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest

from dispatch_aio import (
    Consumer,
    ConsumerFailedError,
    ConsumerState,
    Dispatcher,
    Event,
    Registry,
    Reject,
    RetryAfter,
)

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio


async def publish(dispatcher: Dispatcher, subject: str | None = None) -> str:
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=subject or uid("per"), actor="system:tests"
    )
    return envelope.event_id


async def letters(pool: asyncpg.Pool, consumer: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM dispatcher_dead_letter WHERE consumer = $1 ORDER BY created_at",
            consumer,
        )
    )


# -- item 3: a commit that keeps failing ---------------------------------------------


async def test_a_handler_that_swallows_a_database_error_ends_in_a_dead_letter(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await dispatch_pool.execute("CREATE TABLE effects (event_id text)")
    poison_subject = uid("per")
    consumer = Consumer(
        dispatch_pool,
        name="swallower",
        poll_interval=0.05,
        max_group=50,
        retry_delays=(0.01, 0.01),
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)
        if event.subject == poison_subject:
            # Swallowed: the transaction is aborted, so its commit will fail.
            with contextlib.suppress(asyncpg.DivisionByZeroError):
                await conn.execute("SELECT 1 / 0")

    others = [await publish(dispatcher) for _ in range(5)]
    poison = await publish(dispatcher, poison_subject)
    others += [await publish(dispatcher) for _ in range(5)]
    async with consumer:
        await asyncio.wait_for(consumer.wait_idle(), 20)
        assert consumer.state is ConsumerState.RUNNING
        stats = consumer.stats
    [letter] = await letters(dispatch_pool, "swallower")
    assert letter["event_id"] == poison
    assert letter["attempts"] == 3
    assert letter["error_type"] == "InFailedSQLTransactionError"
    assert stats.handled == len(others)
    written = {r[0] for r in await dispatch_pool.fetch("SELECT event_id FROM effects")}
    assert written == set(others)
    cursor = await dispatch_pool.fetchval(
        "SELECT last_position FROM dispatcher_cursor WHERE consumer = 'swallower'"
    )
    assert cursor == await dispatch_pool.fetchval("SELECT max(position) FROM dispatcher_event")


@pytest.mark.parametrize("text", ["NUL \x00 inside", "a lone surrogate \udcff here"])
async def test_an_error_message_postgres_cannot_store_still_makes_a_dead_letter(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, text: str
) -> None:
    consumer = Consumer(dispatch_pool, name="unstorable", poll_interval=0.05, retry_delays=())

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        raise ValueError(text + "!" * 20_000)

    event_id = await publish(dispatcher)
    async with consumer:
        await asyncio.wait_for(consumer.wait_idle(), 20)
        assert consumer.state is ConsumerState.RUNNING
    [letter] = await letters(dispatch_pool, "unstorable")
    assert letter["event_id"] == event_id
    assert letter["attempts"] == 1
    assert "\x00" not in letter["error_message"]
    assert len(letter["error_message"]) <= 4_000
    assert len(letter["error_traceback"]) <= 16_000


# -- item 4: a CancelledError the consumer did not cause -----------------------------


async def test_a_handler_cancelled_by_someone_else_counts_an_attempt(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    consumer = Consumer(dispatch_pool, name="cancelled", poll_interval=0.05, retry_delays=(0.01,))
    calls: list[int] = []

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        calls.append(event.attempt)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.cancel)
        await future  # raises CancelledError: not the consumer's shutdown

    event_id = await publish(dispatcher)
    async with consumer:
        await asyncio.wait_for(consumer.wait_idle(), 20)
        assert consumer.state is ConsumerState.RUNNING
        later = await publish(dispatcher)
        await asyncio.wait_for(consumer.wait_idle(), 20)
    assert calls == [1, 2, 1, 2]
    found = {r["event_id"]: r for r in await letters(dispatch_pool, "cancelled")}
    assert set(found) == {event_id, later}
    assert found[event_id]["error_type"] == "HandlerCancelledError"
    assert found[event_id]["attempts"] == 2


# -- item 5: deadlocks inside a handler ----------------------------------------------


async def test_a_deadlock_inside_a_handler_counts_no_attempt(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await dispatch_pool.execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, n int);"
        "INSERT INTO accounts VALUES (1, 0), (2, 0)"
    )
    locked = {1: asyncio.Event(), 2: asyncio.Event()}
    first_round: set[str] = set()
    # retry_delays=(): one counted attempt would dead-letter the event at once.
    consumer = Consumer(
        dispatch_pool,
        name="deadlocks",
        poll_interval=0.05,
        concurrency=2,
        max_group=1,
        retry_delays=(),
    )
    a_subject, b_subject = uid("per"), uid("per")

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        mine, theirs = (1, 2) if event.subject == a_subject else (2, 1)
        await conn.execute("SET LOCAL deadlock_timeout = '50ms'")
        await conn.execute("UPDATE accounts SET n = n + 1 WHERE id = $1", mine)
        if event.event_id not in first_round:
            first_round.add(event.event_id)
            locked[mine].set()
            await locked[theirs].wait()
        await conn.execute("UPDATE accounts SET n = n + 1 WHERE id = $1", theirs)

    await publish(dispatcher, a_subject)
    await publish(dispatcher, b_subject)
    async with consumer:
        await asyncio.wait_for(consumer.wait_idle(), 20)
        stats = consumer.stats
    assert stats.handled == 2
    assert stats.retried == 0
    assert stats.dead_lettered == 0
    assert stats.groups_rolled_back >= 1  # the deadlock happened
    assert await dispatch_pool.fetchval("SELECT sum(n) FROM accounts") == 4


# -- handler signals ------------------------------------------------------------------


async def test_reject_dead_letters_at_once_and_retry_after_waits_at_least_its_delay(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    rejected, throttled = uid("per"), uid("per")
    calls: dict[str, list[float]] = {rejected: [], throttled: []}
    consumer = Consumer(
        dispatch_pool, name="signals", poll_interval=0.05, retry_delays=(0.01, 0.01)
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        calls[event.subject].append(asyncio.get_running_loop().time())
        if event.subject == rejected:
            raise Reject("410 Gone")
        raise RetryAfter(0.3, "429 Too Many Requests")

    await publish(dispatcher, rejected)
    await publish(dispatcher, throttled)
    async with consumer:
        await asyncio.wait_for(consumer.wait_idle(), 20)
    assert len(calls[rejected]) == 1
    assert len(calls[throttled]) == 3
    gaps = [b - a for a, b in zip(calls[throttled], calls[throttled][1:], strict=False)]
    assert all(gap >= 0.3 for gap in gaps), gaps
    found = {r["error_type"]: r for r in await letters(dispatch_pool, "signals")}
    assert found["Reject"]["attempts"] == 1
    assert found["Reject"]["error_message"] == "410 Gone"
    assert found["RetryAfter"]["attempts"] == 3


# -- a bug inside the consumer --------------------------------------------------------


class BrokenRegistry:
    """The bundled registry, except that validation has a bug: it raises KeyError."""

    def __init__(self) -> None:
        self._registry = Registry.load()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def validate_payload(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug in validation")

    #: No digest of its own: it checks every payload (ADR 0007), and so meets its bug.
    payload_digests: dict[tuple[str, int], int] = {}


async def test_a_bug_inside_the_consumer_makes_it_failed_and_wait_raises(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    consumer = Consumer(
        dispatch_pool,
        name="buggy",
        poll_interval=0.05,
        registry=BrokenRegistry(),  # type: ignore[arg-type]
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        pass

    await consumer.start()
    await publish(dispatcher)
    with pytest.raises(ConsumerFailedError, match="KeyError") as raised:
        await asyncio.wait_for(consumer.wait(), 20)
    assert isinstance(raised.value.__cause__, KeyError)
    assert consumer.state is ConsumerState.FAILED
    with pytest.raises(ConsumerFailedError):
        await consumer.aclose()
    assert dispatch_pool.get_idle_size() == dispatch_pool.get_size()


# -- item 14: cancelling wait_idle ----------------------------------------------------


async def test_cancelling_wait_idle_leaves_no_task_behind(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    consumer = Consumer(dispatch_pool, name="impatient", poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        entered.set()
        await release.wait()

    await publish(dispatcher)
    async with consumer:
        await asyncio.wait_for(entered.wait(), 10)
        before = asyncio.all_tasks()
        waiting = asyncio.ensure_future(consumer.wait_idle())
        await eventually(
            lambda: len(asyncio.all_tasks()) > len(before) + 1, within=5, what="wait_idle to wait"
        )
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
        assert leftover == []
        release.set()
        await asyncio.wait_for(consumer.wait_idle(), 10)


# -- handler time limits ---------------------------------------------------------------


async def test_a_handler_past_its_time_limit_fails_and_the_rest_of_its_group_runs(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    """One timer serves a group's handlers: a handler that hangs still times out (every
    attempt, then a dead letter), and quick handlers around it, with a longer limit of
    their own, are not cut short by a timer armed for an earlier handler."""
    await dispatch_pool.execute("CREATE TABLE effects (event_id text)")
    hanging_subject = uid("per")
    consumer = Consumer(
        dispatch_pool,
        name="time_limits",
        poll_interval=0.05,
        max_group=50,
        retry_delays=(0.01, 0.01),
        handler_timeout=0.05,
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        if event.subject == hanging_subject:
            await asyncio.get_running_loop().create_future()  # never done
        await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)

    others = [await publish(dispatcher) for _ in range(5)]
    hanging = await publish(dispatcher, hanging_subject)
    others += [await publish(dispatcher) for _ in range(5)]
    async with consumer:
        await asyncio.wait_for(consumer.wait_idle(), 20)
        assert consumer.state is ConsumerState.RUNNING
        stats = consumer.stats
    [letter] = await letters(dispatch_pool, "time_limits")
    assert letter["event_id"] == hanging
    assert letter["attempts"] == 3
    assert letter["error_type"] == "TimeoutError"
    assert stats.handled == len(others)
    written = await dispatch_pool.fetchval("SELECT count(*) FROM effects")
    assert written == len(others)
