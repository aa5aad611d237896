"""Replaying a dead letter: the consumer handles the event again, exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from dispatch_aio import Consumer, DeadLetterAlreadyResolvedError, DeadLetters, Dispatcher, Event

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio


def _projector(
    pool: asyncpg.Pool,
    broken: dict[str, bool],
    calls: list[str],
    *,
    retry_delays: tuple[float, ...] = (),
    after_write: Callable[[], Awaitable[None]] | None = None,
) -> Consumer:
    """A consumer whose handler records each run and writes one row through its
    connection, then fails while ``broken["yes"]``, else awaits ``after_write``."""
    consumer = Consumer(pool, name="projector", poll_interval=0.2, retry_delays=retry_delays)

    @consumer.on("credit.locked")
    async def project(event: Event, conn: asyncpg.Connection) -> None:
        calls.append(event.event_id)
        await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)
        if broken["yes"]:
            raise RuntimeError("projection table is read-only")
        if after_write is not None:
            await after_write()

    return consumer


async def test_replay_handles_the_event_once_more_and_resolves_the_row(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await dispatch_pool.execute("CREATE TABLE effects (event_id text)")
    broken = {"yes": True}
    calls: list[str] = []
    consumer = _projector(dispatch_pool, broken, calls, retry_delays=(0,))
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    dead_letters = DeadLetters(dispatch_pool)
    async with consumer:
        await consumer.wait_idle()
        page = await dead_letters.list("projector")
        [letter] = page.items
        assert letter.event_id == envelope.event_id
        assert letter.attempts == 2
        assert await dispatch_pool.fetchval("SELECT count(*) FROM effects") == 0

        broken["yes"] = False
        calls.clear()
        await dead_letters.replay(letter.dead_letter_id, replayed_by="ops:alice")
        await consumer.wait_idle()

    assert calls == [envelope.event_id]
    assert await dispatch_pool.fetchval("SELECT count(*) FROM effects") == 1
    row = await dead_letters.get(letter.dead_letter_id)
    assert row.replay_status == "succeeded"
    assert row.resolved_by == "ops:alice"
    assert row.resolved_at is not None
    outcome = await dispatch_pool.fetchval(
        "SELECT outcome FROM dispatcher_dedup WHERE consumer = 'projector' AND event_id = $1",
        envelope.event_id,
    )
    assert outcome == "handled"
    with pytest.raises(DeadLetterAlreadyResolvedError):
        await dead_letters.replay(letter.dead_letter_id, replayed_by="ops:alice")


async def test_a_replay_that_fails_again_is_recorded_and_stays_active(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    consumer = Consumer(dispatch_pool, name="projector", poll_interval=0.2, retry_delays=())

    @consumer.on("credit.locked")
    async def project(event: Event) -> None:
        raise ValueError("still broken")

    await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    dead_letters = DeadLetters(dispatch_pool)
    async with consumer:
        await consumer.wait_idle()
        [letter] = (await dead_letters.list("projector")).items
        await dead_letters.replay(letter.dead_letter_id, replayed_by="ops")
        await consumer.wait_idle()
    row = await dead_letters.get(letter.dead_letter_id)
    assert row.replay_status == "failed"
    assert row.replay_error is not None
    assert "still broken" in row.replay_error
    assert row.resolved_at is None
    assert len((await dead_letters.list("projector")).items) == 1


async def test_a_poll_only_consumer_picks_up_a_replay_requested_while_it_runs(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    broken = {"yes": True}
    handled: list[str] = []
    consumer = Consumer(
        dispatch_pool, name="polling", listen=False, poll_interval=0.1, retry_delays=()
    )

    @consumer.on("credit.locked")
    async def project(event: Event) -> None:
        if broken["yes"]:
            raise RuntimeError("not yet")
        handled.append(event.event_id)

    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    dead_letters = DeadLetters(dispatch_pool)
    async with consumer:
        await consumer.wait_idle()
        [letter] = (await dead_letters.list("polling")).items
        broken["yes"] = False
        await dead_letters.replay(letter.dead_letter_id, replayed_by="ops")

        async def replayed() -> bool:
            row = await dead_letters.get(letter.dead_letter_id)
            return row.replay_status == "succeeded"

        # No wait_idle() here: it asks for a replay read itself. Only polling finds it.
        await eventually(replayed, within=10, what="the poll to pick up the replay")
    assert handled == [envelope.event_id]


INVALID = """
INSERT INTO dispatcher_event (
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, payload, xid, position
) VALUES ($1, 'credit.locked', 1, 'tnt_tests', 'tests', $2, 'system:tests', now(),
          '{"locked_credits": "two"}'::jsonb, '0', 0)
"""


async def test_replaying_a_still_invalid_event_fails_the_replay_without_a_new_dead_letter(
    dispatch_pool: asyncpg.Pool,
) -> None:
    event_id = uid("evt")
    await dispatch_pool.execute(INVALID, event_id, uid("per"))
    dead_letters = DeadLetters(dispatch_pool)

    def make() -> Consumer:
        consumer = Consumer(dispatch_pool, name="strict", poll_interval=0.1)

        @consumer.on("credit.locked")
        async def project(event: Event) -> None:
            pass

        return consumer

    async with make() as consumer:
        await asyncio.wait_for(consumer.wait_idle(), 10)
        [letter] = (await dead_letters.list("strict")).items
        await dead_letters.replay(letter.dead_letter_id, replayed_by="ops")
        await asyncio.wait_for(consumer.wait_idle(), 10)
    row = await dead_letters.get(letter.dead_letter_id)
    assert row.replay_status == "failed"
    assert row.replay_error is not None
    assert "InvalidPayloadError" in row.replay_error
    # A restart reads nothing new and dead-letters nothing again.
    async with make() as consumer:
        await asyncio.wait_for(consumer.wait_idle(), 10)
    count = await dispatch_pool.fetchval("SELECT count(*) FROM dispatcher_dead_letter")
    assert count == 1


async def test_a_read_answered_after_its_replay_finished_does_not_run_it_again(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    pool = dispatch_pool
    await pool.execute("CREATE TABLE effects (event_id text)")
    broken = {"yes": True}
    calls: list[str] = []
    consumer = _projector(pool, broken, calls)
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    dead_letters = DeadLetters(pool)
    async with consumer:
        await consumer.wait_idle()
        [letter] = (await dead_letters.list("projector")).items
        broken["yes"] = False
        calls.clear()
        rolled_back = consumer.stats.groups_rolled_back

        # A read of pending replays whose snapshot is from before the replay committed
        # and whose answer is applied after the replay finished here (a read on the wire
        # while the outcome commits, as a loaded machine interleaves them).
        store = consumer._fetcher._store  # type: ignore[attr-defined]
        fetch_replays = store.fetch_replays
        holding = False
        stale_read = asyncio.Event()
        replay_done = asyncio.Event()

        async def late_answer(conn: asyncpg.Connection, limit: int) -> Any:
            rows = await fetch_replays(conn, limit)
            if holding and any(r["dead_letter_id"] == letter.dead_letter_id for r in rows):
                stale_read.set()
                await replay_done.wait()
            return rows

        store.fetch_replays = late_answer
        async with pool.acquire() as holder, holder.transaction():
            # The event's marker row, held: the replay's outcome statement waits on it
            # while the dead letter still reads as pending to every other snapshot.
            await holder.execute(
                "SELECT 1 FROM dispatcher_dedup WHERE consumer = 'projector' AND event_id = $1"
                " FOR UPDATE",
                envelope.event_id,
            )
            holder_pid = holder.get_server_pid()

            async def outcome_waits() -> bool:
                blocked = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    holder_pid,
                )
                return bool(blocked)

            await dead_letters.replay(letter.dead_letter_id, replayed_by="ops:alice")
            await eventually(outcome_waits, within=10, what="the replay's outcome to wait")
            holding = True
            idle = asyncio.create_task(consumer.wait_idle())  # reads replays again
            await asyncio.wait_for(stale_read.wait(), 10)
        await eventually(lambda: consumer.stats.replayed == 1, within=10, what="the replay")
        replay_done.set()
        await asyncio.wait_for(idle, 10)
        stats = consumer.stats

    assert calls == [envelope.event_id]
    assert (stats.replayed, stats.dedup_hits) == (1, 0)
    assert stats.groups_rolled_back == rolled_back
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1
    assert (await dead_letters.get(letter.dead_letter_id)).replay_status == "succeeded"


async def test_a_replay_resolved_by_hand_while_it_runs_counts_as_done_elsewhere(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    pool = dispatch_pool
    await pool.execute("CREATE TABLE effects (event_id text)")
    broken = {"yes": True}
    calls: list[str] = []
    running = asyncio.Event()
    go_on = asyncio.Event()

    async def pause() -> None:
        running.set()
        await go_on.wait()

    consumer = _projector(pool, broken, calls, after_write=pause)
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    dead_letters = DeadLetters(pool)
    async with consumer:
        await consumer.wait_idle()
        [letter] = (await dead_letters.list("projector")).items
        broken["yes"] = False
        calls.clear()
        await dead_letters.replay(letter.dead_letter_id, replayed_by="ops:alice")
        await asyncio.wait_for(running.wait(), 10)
        # An operator closes the row while its replay runs: the run's outcome finds it
        # no longer pending, and its writes roll back.
        await dead_letters.resolve(letter.dead_letter_id, resolved_by="ops:bob")
        go_on.set()
        await asyncio.wait_for(consumer.wait_idle(), 10)
        stats = consumer.stats

    assert calls == [envelope.event_id]
    assert (stats.replayed, stats.dedup_hits) == (0, 1)
    assert await pool.fetchval("SELECT count(*) FROM effects") == 0
    row = await dead_letters.get(letter.dead_letter_id)
    assert (row.resolved_by, row.replay_status) == ("ops:bob", None)


async def test_a_dead_letter_replayed_again_after_its_replay_failed_runs_again(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    pool = dispatch_pool
    await pool.execute("CREATE TABLE effects (event_id text)")
    broken = {"yes": True}
    calls: list[str] = []
    consumer = _projector(pool, broken, calls)
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    dead_letters = DeadLetters(pool)
    async with consumer:
        await consumer.wait_idle()
        [letter] = (await dead_letters.list("projector")).items
        calls.clear()
        await dead_letters.replay(letter.dead_letter_id, replayed_by="ops:alice")
        await consumer.wait_idle()
        assert (await dead_letters.get(letter.dead_letter_id)).replay_status == "failed"
        assert calls == [envelope.event_id]

        # The same dead letter, asked for again once fixed: a new request, so it runs.
        broken["yes"] = False
        await dead_letters.replay(letter.dead_letter_id, replayed_by="ops:alice")
        await consumer.wait_idle()
        stats = consumer.stats

    assert calls == [envelope.event_id] * 2
    assert stats.replayed == 1
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1
    row = await dead_letters.get(letter.dead_letter_id)
    assert (row.replay_status, row.resolved_by) == ("succeeded", "ops:alice")
