"""prune: old events every consumer has passed go, with their dedup markers; others stay."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event, UsageError, prune

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio


async def _count(pool: asyncpg.Pool, table: str) -> int:
    value = await pool.fetchval(f"SELECT count(*) FROM {table}")
    assert isinstance(value, int)
    return value


async def _drain(pool: asyncpg.Pool, name: str, *, fail: set[str] | None = None) -> None:
    consumer = Consumer(pool, name=name, poll_interval=0.2, retry_delays=())

    @consumer.on("credit.locked")
    async def handle(event: Event) -> None:
        if fail and event.event_id in fail:
            raise RuntimeError("not today")

    async with consumer:
        await consumer.wait_idle()


async def test_prune_keeps_what_a_consumer_or_a_dead_letter_still_needs(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    ids = [
        (
            await dispatcher.publish(
                "credit.locked", locked_payload(), subject=uid("per"), actor="system:t"
            )
        ).event_id
        for _ in range(10)
    ]
    await _drain(dispatch_pool, "fast", fail={ids[3]})
    # A second consumer that has not read anything yet holds every event back.
    await dispatch_pool.execute(
        "INSERT INTO dispatcher_cursor (consumer, event_type) VALUES ('slow', 'credit.locked')"
    )
    nothing = await prune(dispatch_pool, older_than=timedelta(0))
    assert (nothing.events, nothing.dedup_markers) == (0, 0)
    assert await _count(dispatch_pool, "dispatcher_event") == 10

    await _drain(dispatch_pool, "slow")
    too_young = await prune(dispatch_pool, older_than=timedelta(hours=1))
    assert too_young.events == 0

    # Markers younger than a minute keep their events (see the prune rule in docs/).
    fresh_markers = await prune(dispatch_pool, older_than=timedelta(0))
    assert fresh_markers.events == 0
    await dispatch_pool.execute(
        "UPDATE dispatcher_dedup SET handled_at = now() - interval '2 minutes'"
    )

    batches: list[int] = []
    result = await prune(
        dispatch_pool,
        older_than=timedelta(0),
        batch_size=4,
        progress=lambda so_far: batches.append(so_far.events),
    )
    # Nine go; the one with an unresolved dead letter stays for a replay.
    assert result.events == 9
    assert result.dedup_markers == 9 + 9  # the markers of both consumers for those nine
    assert batches == [4, 8, 9]
    left = await dispatch_pool.fetch("SELECT event_id FROM dispatcher_event")
    assert [r["event_id"] for r in left] == [ids[3]]
    markers = await dispatch_pool.fetch("SELECT consumer FROM dispatcher_dedup ORDER BY 1")
    assert [r["consumer"] for r in markers] == ["fast", "slow"]

    # The consumers go on as before after a prune.
    fresh = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:t"
    )
    await _drain(dispatch_pool, "fast")
    handled = await dispatch_pool.fetchval(
        "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'fast' AND event_id = $1",
        fresh.event_id,
    )
    assert handled == 1


async def test_a_partition_cursor_behind_holds_its_partition_s_events(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    for _ in range(6):
        await dispatcher.publish("credit.locked", locked_payload(), subject=uid("per"), actor="s:t")
    await _drain(dispatch_pool, "fast")
    held = await dispatch_pool.fetchrow(
        "SELECT event_id, partition, xid::text::bigint AS xid, position FROM dispatcher_event"
        " ORDER BY position LIMIT 1"
    )
    # A partitioned consumer whose cursor of that partition sits just before the event.
    await dispatch_pool.execute(
        "INSERT INTO dispatcher_partition_cursor"
        " (consumer, event_type, partition, last_xid, last_position)"
        " VALUES ('grouped', 'credit.locked', $1, $2::text::xid8, $3)",
        held["partition"],
        str(held["xid"]),
        held["position"] - 1,
    )
    # Markers younger than a minute are kept (a live process may still need them).
    await dispatch_pool.execute(
        "UPDATE dispatcher_dedup SET handled_at = handled_at - interval '2 minutes'"
    )
    result = await prune(dispatch_pool, older_than=timedelta(0))
    kept = await dispatch_pool.fetch("SELECT event_id, partition FROM dispatcher_event")
    assert held["event_id"] in {r["event_id"] for r in kept}
    assert all(r["partition"] == held["partition"] for r in kept)
    assert result.events == 6 - len(kept)


async def test_prune_refuses_a_negative_age(dispatch_pool: asyncpg.Pool) -> None:
    with pytest.raises(UsageError):
        await prune(dispatch_pool, older_than=timedelta(seconds=-1))


async def test_prune_between_two_processes_of_one_consumer_never_duplicates_effects(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await dispatch_pool.execute("CREATE TABLE effects (event_id text, process text)")
    subject = uid("per")
    blocker, held = [
        (
            await dispatcher.publish(
                "credit.locked", locked_payload(), subject=subject, actor="system:t"
            )
        ).event_id
        for _ in range(2)
    ]
    entered, release = asyncio.Event(), asyncio.Event()

    def process(label: str, *, block: bool) -> Consumer:
        consumer = Consumer(dispatch_pool, name="twice", poll_interval=0.05, max_group=1)

        @consumer.on("credit.locked")
        async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO effects VALUES ($1, $2)", event.event_id, label)
            if block and event.event_id == blocker:
                entered.set()
                await release.wait()

        return consumer

    # The slow process holds the subject's partition, stuck in the first one's handler:
    # the second process gets other partitions (ADR 0006) and never handles these two.
    async with process("slow", block=True) as slow:
        await asyncio.wait_for(entered.wait(), 10)
        async with process("fast", block=False) as fast:
            await asyncio.wait_for(fast.wait_idle(), 10)
            assert fast.stats.handled == 0
            # Nothing is pruned while the slow one still holds them.
            pruned = await prune(dispatch_pool, older_than=timedelta(0))
            assert pruned.events == 0
            release.set()
            await asyncio.wait_for(slow.wait_idle(), 10)
            assert slow.stats.handled == 2

        async def cursor_passed() -> bool:
            top = await dispatch_pool.fetchval(
                "SELECT last_position FROM dispatcher_cursor WHERE consumer = 'twice'"
            )
            return bool(
                top == await dispatch_pool.fetchval("SELECT max(position) FROM dispatcher_event")
            )

        await eventually(cursor_passed, within=10, what="the stored cursor to pass both")
        # As if this had all happened long ago: prune takes both events and markers.
        await dispatch_pool.execute(
            "UPDATE dispatcher_dedup SET handled_at = now() - interval '2 minutes'"
        )
        pruned = await prune(dispatch_pool, older_than=timedelta(0))
        assert (pruned.events, pruned.dedup_markers) == (2, 2)
    rows = await dispatch_pool.fetch(
        "SELECT event_id, count(*) AS n FROM effects GROUP BY event_id ORDER BY event_id"
    )
    assert {r["event_id"]: r["n"] for r in rows} == {blocker: 1, held: 1}
