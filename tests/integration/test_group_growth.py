"""A group is given its subjects as it gets through them (Scheduler.take_more).

Against real PostgreSQL: an event that takes long holds back only its own subject's
events, not events that happened to be taken with it; and events of a subject read
while its group runs join that group (in order) instead of waiting for its commit.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio


def spec(subject: str) -> dict[str, object]:
    return {
        "event_type": "credit.locked",
        "payload": locked_payload(),
        "subject": subject,
        "actor": "system:tests",
    }


async def test_a_slow_event_holds_back_only_its_own_subject(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    # Two workers, four subjects of one event each: a fair share is two. Shared out up
    # front, the slow event's worker would hold one of the others until it is done.
    slow, others = uid("per"), [uid("per") for _ in range(3)]
    entered, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []
    consumer = Consumer(
        dispatch_pool, name=uid("grow"), concurrency=2, poll_interval=0.05, handler_timeout=None
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        if event.subject == slow:
            entered.set()
            await release.wait()
        handled.append(event.subject)

    await dispatcher.publish_many([spec(s) for s in [slow, *others]])  # type: ignore[misc]
    async with consumer:
        await asyncio.wait_for(entered.wait(), 10)
        # Every other subject is handled and committed while the slow one still runs.
        await eventually(
            lambda: consumer.stats.handled == 3, within=10, what="the other three events"
        )
        assert sorted(handled) == sorted(others)
        release.set()
        await eventually(lambda: consumer.stats.handled == 4, within=10, what="the slow one")
    assert handled[-1] == slow


async def test_a_subjects_events_read_while_its_group_runs_join_that_group(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    subject = uid("per")
    entered, release = asyncio.Event(), asyncio.Event()
    seen: list[tuple[str, int]] = []
    consumer = Consumer(
        dispatch_pool, name=uid("grow"), concurrency=1, poll_interval=0.05, handler_timeout=None
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        seen.append((event.event_id, await conn.fetchval("SELECT txid_current()")))
        if len(seen) == 1:
            entered.set()
            await release.wait()

    first = await dispatcher.publish(**spec(subject))  # type: ignore[arg-type]
    async with consumer:
        await asyncio.wait_for(entered.wait(), 10)
        second = await dispatcher.publish(**spec(subject))  # type: ignore[arg-type]
        await eventually(lambda: consumer.buffered() == 2, within=10, what="the second read")
        release.set()
        await eventually(lambda: consumer.stats.handled == 2, within=10, what="both handled")
    # In order, and in the transaction that was still open: no commit in between.
    assert [e for e, _ in seen] == [first.event_id, second.event_id]
    assert seen[0][1] == seen[1][1]
    assert consumer.stats.groups_committed == 1


async def test_a_group_holding_a_partition_being_handed_over_takes_no_more(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    """The member task decides to hand over the partition of a running group's subject.
    The group ends with what it holds (the subject queued behind it waits for a group of
    its own), so the partition can go as soon as that group commits, not once the group
    has grown to a fair share. (The decision is set directly: which partitions a member
    hands over depends on the group's backlogs, see test_group_handover.py.)"""
    leaving = uid("per")
    part = await dispatch_pool.fetchval("SELECT dispatcher_partition($1)", leaving)
    staying = uid("per")
    while await dispatch_pool.fetchval("SELECT dispatcher_partition($1)", staying) == part:
        staying = uid("per")  # its own partition: never held back by the hand-over
    entered, release = asyncio.Event(), asyncio.Event()
    seen: dict[str, list[int]] = {}
    consumer = Consumer(
        dispatch_pool,
        name=uid("grow"),
        concurrency=1,
        poll_interval=0.05,
        handler_timeout=None,
        lease_timeout=60,  # no heartbeat step while the test runs
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        seen.setdefault(event.subject, []).append(await conn.fetchval("SELECT txid_current()"))
        if event.subject == leaving and not entered.is_set():
            entered.set()
            await release.wait()

    async with consumer:
        # The longest subject is taken first: the one whose partition is handed over.
        await dispatcher.publish_many([spec(s) for s in [leaving] * 3 + [staying] * 2])  # type: ignore[misc]
        await asyncio.wait_for(entered.wait(), 10)

        # The decision stays made: a step of the member task would revise it (a lone
        # member hands nothing over), and one comes with any notice on the lease channel,
        # or late under load; the group would then grow with the other subject.
        async def no_step(conn: asyncpg.Connection) -> float:
            return 60.0

        consumer._members.step = no_step  # type: ignore[method-assign]
        consumer._members.handing_over.add(part)
        release.set()
        await eventually(
            lambda: sum(len(t) for t in seen.values()) == 5, within=20, what="every event"
        )
    # The handed-over subject committed alone; the other subject had a group of its own.
    [group] = set(seen[leaving])
    assert group not in seen[staying]
