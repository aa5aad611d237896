"""Hand-over of partitions inside one process (ADR 0006, part B): a stored cursor never
passes an event without an outcome, and a subject's events keep their order, however a
read on the wire and a change of owners interleave.

Two triggers watch every cursor the consumer stores: a row written past an event of its
partition (or, for the per-type cursor, of its type) that has no dedup marker is a
violation. A later owner starts from that cursor: such an event would be lost, or handled
after its subject's later events.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event
from dispatch_aio._consume._items import Item
from dispatch_aio._consume.leases_store import LeaseStore

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio

NAME = "handover"

WATCH_CURSORS = """
CREATE TABLE effects (event_id text PRIMARY KEY, seq bigserial);
CREATE TABLE cursor_violations (
    kind text, event_type text, partition smallint, event_id text,
    last_xid xid8, last_position bigint
);
CREATE FUNCTION watch_partition_cursor() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO cursor_violations
    SELECT 'partition', NEW.event_type, NEW.partition, e.event_id, NEW.last_xid,
           NEW.last_position
    FROM dispatcher_event e
    WHERE e.event_type = NEW.event_type
      AND coalesce(e.partition, dispatcher_partition(e.subject)) = NEW.partition
      AND (e.xid, e.position) <= (NEW.last_xid, NEW.last_position)
      AND (TG_OP = 'INSERT' OR (e.xid, e.position) > (OLD.last_xid, OLD.last_position))
      AND NOT EXISTS (SELECT 1 FROM dispatcher_dedup d
                      WHERE d.consumer = NEW.consumer AND d.event_id = e.event_id);
    RETURN NULL;
END
$fn$;
CREATE TRIGGER watch AFTER INSERT OR UPDATE ON dispatcher_partition_cursor
    FOR EACH ROW EXECUTE FUNCTION watch_partition_cursor();
CREATE FUNCTION watch_type_cursor() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO cursor_violations
    SELECT 'type', NEW.event_type, NULL, e.event_id, NEW.last_xid, NEW.last_position
    FROM dispatcher_event e
    WHERE e.event_type = NEW.event_type
      AND (e.xid, e.position) <= (NEW.last_xid, NEW.last_position)
      AND (TG_OP = 'INSERT' OR (e.xid, e.position) > (OLD.last_xid, OLD.last_position))
      AND NOT EXISTS (SELECT 1 FROM dispatcher_dedup d
                      WHERE d.consumer = NEW.consumer AND d.event_id = e.event_id);
    RETURN NULL;
END
$fn$;
CREATE TRIGGER watch AFTER INSERT OR UPDATE ON dispatcher_cursor
    FOR EACH ROW EXECUTE FUNCTION watch_type_cursor();
"""

# Per subject, effects in the order they were written must be in position order.
INVERSIONS = """
SELECT count(*) FROM (
    SELECT e.position,
           lag(e.position) OVER (PARTITION BY e.subject ORDER BY f.seq) AS before
    FROM effects f JOIN dispatcher_event e ON e.event_id = f.event_id
) o
WHERE o.before > o.position
"""


@pytest.fixture
async def pool(dispatch_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dispatch_dsn, min_size=2, max_size=16)
    await pool.execute(WATCH_CURSORS)
    try:
        yield pool
    finally:
        await pool.close()


def consumer(
    pool: asyncpg.Pool,
    *,
    max_sleep: float = 0.0,
    handled: list[str] | None = None,
    **options: Any,
) -> Consumer:
    settings: dict[str, Any] = {
        "concurrency": 2,
        "batch_size": 10,
        "max_group": 4,
        "poll_interval": 0.2,
        "drain_timeout": 10.0,
    }
    c = Consumer(pool, name=NAME, **(settings | options))

    @c.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO effects (event_id) VALUES ($1)", event.event_id)
        if handled is not None:
            handled.append(event.event_id)
        if max_sleep:
            await asyncio.sleep(random.uniform(0, max_sleep))

    return c


async def owners(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT owner, count(*) AS n FROM dispatcher_lease WHERE consumer = $1 "
        "AND owner IS NOT NULL GROUP BY owner",
        NAME,
    )
    return {r["owner"]: r["n"] for r in rows}


async def held_by(pool: asyncpg.Pool, member: str) -> set[int]:
    rows = await pool.fetch(
        "SELECT partition FROM dispatcher_lease WHERE consumer = $1 AND owner = $2",
        NAME,
        member,
    )
    return {r["partition"] for r in rows}


async def partition_of(pool: asyncpg.Pool, subject: str) -> int:
    return int(await pool.fetchval("SELECT dispatcher_partition($1)", subject))


async def subjects_in(pool: asyncpg.Pool, partitions: set[int], n: int) -> list[str]:
    found: list[str] = []
    while len(found) < n:
        subject = uid("per")
        if await partition_of(pool, subject) in partitions:
            found.append(subject)
    return found


def events(subjects: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "event_type": "credit.locked",
            "payload": locked_payload(),
            "subject": s,
            "actor": "system:tests",
        }
        for s in subjects
    ]


async def exactly_once_in_order(pool: asyncpg.Pool) -> None:
    total = await pool.fetchval("SELECT count(*) FROM dispatcher_event")
    assert await pool.fetchval("SELECT count(*) FROM effects") == total
    assert await pool.fetchval("SELECT count(*) FROM dispatcher_dedup") == total
    assert await pool.fetchval("SELECT count(*) FROM dispatcher_dead_letter") == 0
    assert await pool.fetchval(INVERSIONS) == 0


async def test_a_read_on_the_wire_while_partitions_are_gained_moves_no_cursor_past_them(
    pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    """The read loop's statement is in flight when the member task takes partitions over
    (their stream restarts from their stored cursors): that read's snapshot must not move
    the stored cursors of the gained partitions past their unread events.

    With ``dsn`` the member task steps on a connection of its own (without, it borrows
    the read connection between reads, and cannot step while a read is out)."""
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    async with pool.acquire() as conn:
        # Another member of the group, driven by hand: it holds half the partitions and
        # never handles anything.
        other = LeaseStore("public", NAME, "other:1", lease_timeout=120)
        a = consumer(pool, lease_timeout=120, dsn=dispatch_dsn)
        async with a:
            me = a._leases.member_id
            await eventually(lambda: _holds(pool, me, 256), within=30, what="all to be held")
            await other.join(conn)

            async def other_takes_its_share() -> bool:
                await other.acquire(conn, range(256))
                return len(await held_by(pool, other.member_id)) == 128

            await eventually(other_takes_its_share, within=30, what="the other's share")
            gained = await held_by(pool, other.member_id)

            # The next read that returns rows stops on its way back, as a slow network does.
            streams = a._fetcher._streams
            fetch = streams.fetch
            on_the_wire, go = asyncio.Event(), asyncio.Event()

            async def slow_fetch(*args: Any, **kwargs: Any) -> Any:
                result = await fetch(*args, **kwargs)
                if not on_the_wire.is_set() and result.streams[0].range_rows:
                    on_the_wire.set()
                    await go.wait()
                return result

            streams.fetch = slow_fetch  # type: ignore[method-assign]
            # One transaction: first an event of a partition the other holds, then events
            # of this member's partitions (the read on the wire gets those).
            mine = set(range(256)) - gained
            await dispatcher.publish_many(
                events(await subjects_in(pool, gained, 3) + await subjects_in(pool, mine, 5))
            )
            await asyncio.wait_for(on_the_wire.wait(), 30)
            # The other leaves: this member takes its partitions while the read is out.
            await other.leave(conn)
            await eventually(lambda: _holds(pool, me, 256), within=30, what="the takeover")
            await eventually(
                lambda: a._reader.cursor_partitions is None,
                within=30,
                what="the gained partitions' stream to start",
            )
            go.set()
            await asyncio.wait_for(a.wait_idle(), 60)
        assert await pool.fetch("SELECT * FROM cursor_violations") == []
        await exactly_once_in_order(pool)


async def test_wait_idle_does_not_return_while_gained_partitions_are_not_read_yet(
    pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    """The member task has committed its acquisition of partitions with events waiting,
    and their stream has not started yet (it reads their stored cursors first): a read
    in that gap covers only the old partitions and finds nothing, but the consumer is not
    idle. ``wait_idle`` returns only once the gained partitions' events have outcomes.

    With ``dsn`` the member task steps on a connection of its own, so reads go on while
    it takes partitions over."""
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    async with pool.acquire() as conn:
        other = LeaseStore("public", NAME, "other:1", lease_timeout=120)
        a = consumer(pool, lease_timeout=120, dsn=dispatch_dsn)
        async with a:
            me = a._leases.member_id
            await eventually(lambda: _holds(pool, me, 256), within=30, what="all to be held")
            await other.join(conn)

            async def other_takes_its_share() -> bool:
                await other.acquire(conn, range(256))
                return len(await held_by(pool, other.member_id)) == 128

            await eventually(other_takes_its_share, within=30, what="the other's share")
            gained = await held_by(pool, other.member_id)
            # Events that only the other's partitions hold; it never handles them.
            await dispatcher.publish_many(events(await subjects_in(pool, gained, 5)))
            await asyncio.wait_for(a.wait_idle(), 30)
            assert await pool.fetchval("SELECT count(*) FROM effects") == 0

            # The takeover stops between its acquisition and the start of the stream.
            leases = a._leases
            read_cursors = leases.read_cursors
            in_the_gap, go = asyncio.Event(), asyncio.Event()

            async def slow_read_cursors(*args: Any, **kwargs: Any) -> Any:
                in_the_gap.set()
                await go.wait()
                return await read_cursors(*args, **kwargs)

            leases.read_cursors = slow_read_cursors  # type: ignore[method-assign]
            await other.leave(conn)
            await asyncio.wait_for(in_the_gap.wait(), 30)
            assert await _holds(pool, me, 256)
            waiter = asyncio.create_task(a.wait_idle())
            reads = a._reader.fetch_seq
            try:
                # Reads go on in the gap (they find nothing), and none of them is idle.
                await eventually(
                    lambda: a._reader.fetch_seq >= reads + 3, within=30, what="reads in the gap"
                )
                assert not waiter.done(), "idle while gained partitions were not read"
            finally:
                go.set()
            await asyncio.wait_for(waiter, 30)
            assert await pool.fetchval("SELECT count(*) FROM effects") == 5
        assert await pool.fetch("SELECT * FROM cursor_violations") == []
        await exactly_once_in_order(pool)


async def test_partitions_whose_stream_failed_to_start_are_started_by_the_next_step(
    pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    """The connection fails after the acquisition committed, while the gained partitions'
    stored cursors are read: the partitions are held, their stream did not start. The
    member task's next step starts it from their cursors (without, they stayed held and
    unread: their events never ran, and wait_idle found the consumer idle)."""
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    async with pool.acquire() as conn:
        other = LeaseStore("public", NAME, "other:1", lease_timeout=120)
        a = consumer(pool, lease_timeout=3, dsn=dispatch_dsn)
        async with a:
            me = a._leases.member_id
            await eventually(lambda: _holds(pool, me, 256), within=30, what="all to be held")
            await other.join(conn)

            async def other_takes_its_share() -> bool:
                await other.heartbeat(conn)
                await other.acquire(conn, range(256))
                return len(await held_by(pool, other.member_id)) == 128

            await eventually(other_takes_its_share, within=30, what="the other's share")
            gained = await held_by(pool, other.member_id)
            await dispatcher.publish_many(events(await subjects_in(pool, gained, 5)))

            leases = a._leases
            read_cursors = leases.read_cursors
            failed = asyncio.Event()

            async def failing_read_cursors(*args: Any, **kwargs: Any) -> Any:
                if not failed.is_set():
                    failed.set()
                    raise asyncpg.exceptions.ConnectionDoesNotExistError("connection lost")
                return await read_cursors(*args, **kwargs)

            leases.read_cursors = failing_read_cursors  # type: ignore[method-assign]
            await other.leave(conn)
            await asyncio.wait_for(failed.wait(), 30)
            await eventually(
                lambda: _count(pool, "SELECT count(*) FROM effects", 5),
                within=30,
                what="the gained partitions' events",
            )
            await asyncio.wait_for(a.wait_idle(), 30)
        assert await pool.fetch("SELECT * FROM cursor_violations") == []
        await exactly_once_in_order(pool)


async def _count(pool: asyncpg.Pool, sql: str, expected: int) -> bool:
    return int(await pool.fetchval(sql)) == expected


async def test_dropping_a_lost_partitions_events_lets_the_read_loop_read_again(
    pool: asyncpg.Pool,
) -> None:
    """The buffer is full, mostly of events of a partition this process then loses, and
    every worker is busy: dropping those events makes room, and the read loop reads on
    at once (it does not wait for a running group to finish first)."""
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    other = LeaseStore("public", NAME, "other:1", lease_timeout=120)
    release = asyncio.Event()
    c = Consumer(
        pool,
        name=NAME,
        concurrency=2,
        batch_size=2,
        max_buffered=8,
        max_group=1,
        poll_interval=0.2,
        lease_timeout=120,
        drain_timeout=10.0,
    )
    lost = 200

    @c.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        await release.wait()
        await conn.execute("INSERT INTO effects (event_id) VALUES ($1)", event.event_id)

    blocking = await subjects_in(pool, set(range(100)), 3)
    async with c:
        me = c._leases.member_id
        await eventually(lambda: _holds(pool, me, 256), within=30, what="all to be held")
        capacity = c._reader.capacity = WatchedEvent()
        # Two events that occupy both workers, then four of one partition that wait.
        await dispatcher.publish_many(events(blocking[:2] + await subjects_in(pool, {lost}, 4)))
        await eventually(lambda: c.backlog() == 6, within=30, what="the buffer to fill")
        await eventually(lambda: capacity.waiting, within=30, what="the read loop to pause")
        async with pool.acquire() as conn:
            await other.join(conn)
            await conn.execute(
                "UPDATE dispatcher_lease SET owner = $2, epoch = epoch + 1, "
                "acquired_at = now() WHERE consumer = $1 AND partition = $3",
                NAME,
                other.member_id,
                lost,
            )
        c._members.wake.set()
        await eventually(lambda: lost not in c._members.owned, within=30, what="the loss")
        await dispatcher.publish_many(events(blocking[2:]))
        try:
            # Read while both groups still run: two running, one more read.
            await eventually(lambda: c.backlog() == 3, within=10, what="the next read")
        finally:
            release.set()
        async with pool.acquire() as conn:
            await other.leave(conn)
        await asyncio.wait_for(c.wait_idle(), 30)
    assert await pool.fetchval("SELECT count(*) FROM effects") == 7


class WatchedEvent(asyncio.Event):
    """An event that tells whether someone waits on it now."""

    waiting = False

    async def wait(self) -> Literal[True]:
        self.waiting = True
        try:
            return await super().wait()
        finally:
            self.waiting = False


async def _holds(pool: asyncpg.Pool, member: str, n: int) -> bool:
    return len(await held_by(pool, member)) == n


@pytest.mark.slow
async def test_many_hand_overs_between_two_consumers_of_one_name(
    pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    """One consumer runs throughout; a second of the same name joins and drains away,
    round after round, while events are published: nothing lost, doubled or reordered,
    and no cursor ever stored past an event without an outcome. The first steps its
    member task on a connection of its own, the second on its read connection."""
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    subjects = [uid("per") for _ in range(60)]
    producing = True

    async def producer() -> None:
        while producing:
            await dispatcher.publish_many(events(random.choices(subjects, k=10)))
            await asyncio.sleep(0.005)

    a = consumer(pool, max_sleep=0.003, lease_timeout=30, dsn=dispatch_dsn)
    async with a:
        me = a._leases.member_id
        task = asyncio.create_task(producer())
        try:
            for _ in range(8):
                b = consumer(pool, max_sleep=0.003, lease_timeout=30)
                async with b:
                    you = b._leases.member_id
                    await eventually(
                        lambda you=you: _split(pool, me, you), within=30, what="a split in two"
                    )
                await eventually(lambda: _holds(pool, me, 256), within=30, what="all back")
        finally:
            producing = False
            await task
        await asyncio.wait_for(a.wait_idle(), 120)
    assert await pool.fetch("SELECT * FROM cursor_violations") == []
    await exactly_once_in_order(pool)


async def test_a_backlog_in_one_members_partitions_is_shared_with_the_other(
    pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    """Every event of a backlog lands in partitions one member holds. The members report
    their backlogs and swap partitions (ADR 0006, part E), so the other member handles a
    good part of it: nothing lost, doubled or reordered, no cursor stored past an event
    without an outcome, and the count of partitions each holds stays fair."""
    # A buffer that holds the whole backlog.
    await _backlog_is_shared(pool, dispatch_dsn, batch_size=100)


async def _backlog_is_shared(pool: asyncpg.Pool, dispatch_dsn: str, **options: Any) -> None:
    """240 events land in the partitions of one of two members (consumers built with
    ``options``): the other handles a good part of them, and all is exactly once."""
    handled_a: list[str] = []
    handled_b: list[str] = []
    options |= {"max_sleep": 0.04, "lease_timeout": 30}
    a = consumer(pool, dsn=dispatch_dsn, handled=handled_a, **options)
    b = consumer(pool, handled=handled_b, **options)
    async with a, b:
        me, you = a._leases.member_id, b._leases.member_id
        await eventually(lambda: _split(pool, me, you), within=30, what="a split in two")
        subjects = await subjects_in(pool, await held_by(pool, me), 24)
        dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
        # One transaction, each subject's 10 events in order, subjects interleaved.
        await dispatcher.publish_many(events(subjects * 10))
        await eventually(
            lambda: _effects_at_least(pool, 240), within=60, what="every event handled"
        )
        await eventually(lambda: _split(pool, me, you), within=30, what="counts fair again")
        await asyncio.wait_for(a.wait_idle(), 60)
        await asyncio.wait_for(b.wait_idle(), 60)
    assert len(set(handled_a) | set(handled_b)) == 240
    # Without balancing, b would handle none of them.
    assert len(set(handled_b)) >= 60, (len(handled_a), len(handled_b))
    assert await pool.fetch("SELECT * FROM cursor_violations") == []
    await exactly_once_in_order(pool)


async def _effects_at_least(pool: asyncpg.Pool, n: int) -> bool:
    return int(await pool.fetchval("SELECT count(*) FROM effects")) >= n


async def _split(pool: asyncpg.Pool, a: str, b: str) -> bool:
    return await owners(pool) == {a: 128, b: 128}


async def test_a_process_that_lost_its_lease_counts_no_attempt_there(pool: asyncpg.Pool) -> None:
    """A handler fails after another member took the partition over (this one was paused
    past its lease): the failed attempt is not stored, as an outcome would not be, so a
    stale process cannot push the new owner's event towards a dead letter."""
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    other = LeaseStore("public", NAME, "other:1", lease_timeout=120)
    taken = asyncio.Event()
    c = Consumer(pool, name=NAME, lease_timeout=120, retry_delays=(60,), poll_interval=0.2)

    @c.on("credit.locked")
    async def fail(event: Event) -> None:
        if not taken.is_set():
            # What a pause past the lease leads to: another member took every lease over
            # (a new epoch each), as its acquisition does.
            async with pool.acquire() as conn:
                await other.join(conn)
                await conn.execute(
                    "UPDATE dispatcher_lease SET owner = $2, epoch = epoch + 1,"
                    " acquired_at = now() WHERE consumer = $1",
                    NAME,
                    other.member_id,
                )
            taken.set()
        raise RuntimeError("boom")

    async with c:
        await dispatcher.publish_many(events([uid("per")]))
        await asyncio.wait_for(taken.wait(), 30)
        await eventually(lambda: not c._members.owned, within=30, what="the loss to be seen")
    assert await pool.fetchval("SELECT count(*) FROM dispatcher_attempt") == 0
    assert await pool.fetchval("SELECT count(*) FROM dispatcher_dead_letter") == 0


async def test_partitions_gained_are_read_on_their_own_from_their_cursors(
    pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    """A member takes over partitions whose stored cursor lies far below its own reads:
    it reads them from that cursor on a stream of their own (ADR 0006), and reads again
    none of the events of the partitions it already held (each would come back as a
    dedup hit), however far back the gained cursor is."""
    a = consumer(pool, dsn=dispatch_dsn, lease_timeout=30, batch_size=50)
    gate = asyncio.Event()
    b = Consumer(
        pool, name=NAME, concurrency=2, batch_size=50, poll_interval=0.2, drain_timeout=0.5
    )

    @b.on("credit.locked")
    async def stuck(event: Event, conn: asyncpg.Connection) -> None:
        await gate.wait()  # never set: b leaves with these in flight

    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    async with a:
        me = a._leases.member_id
        await b.start()
        you = b._leases.member_id
        await eventually(lambda: _split(pool, me, you), within=30, what="a split in two")
        # b's events first (lower ids), then a's: b's cursor stays below all of a's.
        await dispatcher.publish_many(events(await subjects_in(pool, await held_by(pool, you), 20)))
        mine = await subjects_in(pool, await held_by(pool, me), 30)
        await dispatcher.publish_many(events(mine * 2))
        await eventually(lambda: _effects_at_least(pool, 60), within=30, what="a's events")
        hits_before = a.stats.dedup_hits
        await b.aclose()  # its handlers time out and roll back; it hands its leases back
        await eventually(lambda: _holds(pool, me, 256), within=30, what="all taken over")
        await eventually(lambda: _effects_at_least(pool, 80), within=30, what="b's events")
        await asyncio.wait_for(a.wait_idle(), 60)
        assert a.stats.dedup_hits - hits_before == 0
        assert len(a._fetcher._readings) == 1  # caught up, and merged into the main stream
    assert await pool.fetch("SELECT * FROM cursor_violations") == []
    await exactly_once_in_order(pool)


async def test_a_partition_handed_over_is_read_by_its_next_owner_from_its_own_mark(
    pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    """A backlog is half handled when a second member joins and takes half the
    partitions. The cursor stored for each partition handed over is that partition's own
    mark (below its first event without an outcome), not the type's mark, which waits for
    the slowest subject: the newcomer reads again none of the events already handled but
    those of groups still running when the partitions left (each hand-over, and each
    gift after it, at most concurrency x max_group = 8).

    One subject per partition, so each partition's events are handled in order and its
    own mark leaves nothing handled above it."""
    partitions = random.sample(range(256), 40)
    subjects = [(await subjects_in(pool, {p}, 1))[0] for p in partitions]
    a = consumer(pool, dsn=dispatch_dsn, lease_timeout=30, max_sleep=0.02, batch_size=50)
    b = consumer(pool, lease_timeout=30, batch_size=50)
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    async with a:
        me = a._leases.member_id
        departures = 0  # how many times partitions left a
        marks = a._scheduler.marks.partition_marks

        def counted(
            inflight: Iterable[Item], parts: set[int]
        ) -> dict[tuple[str, int], tuple[int, int]]:
            nonlocal departures
            departures += bool(parts)
            return marks(inflight, parts)

        a._scheduler.marks.partition_marks = counted  # type: ignore[method-assign]
        await eventually(lambda: _holds(pool, me, 256), within=30, what="a holds all")
        # One transaction, subjects interleaved: the type's mark stays below the slowest.
        await dispatcher.publish_many(events(subjects * 5))
        await eventually(lambda: _effects_at_least(pool, 60), within=30, what="a third")
        async with b:
            you = b._leases.member_id
            await eventually(lambda: _split(pool, me, you), within=30, what="a split in two")
            await eventually(lambda: _effects_at_least(pool, 200), within=60, what="all")
            await asyncio.wait_for(b.wait_idle(), 60)
            assert b.stats.handled > 0  # b took partitions with events left in them
            assert departures >= 1
            # With the type's mark, 20 to 34 for a single hand-over.
            assert b.stats.dedup_hits <= 8 * departures, departures
    assert await pool.fetch("SELECT * FROM cursor_violations") == []
    await exactly_once_in_order(pool)


async def test_a_backlog_longer_than_the_buffer_is_shared_by_what_is_left_to_read(
    pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    """As the test above, with a read-ahead buffer far shorter than the backlog: what a
    member reports is what it holds in its partitions, read or not (it counts the rows it
    has yet to read), so the other member takes a good part of it, as with a buffer that
    holds it all. Counting only what was read, both looked equally loaded (each as full
    as its buffer) until the very end of the backlog: the other handled 0 of 240."""
    await _backlog_is_shared(pool, dispatch_dsn, max_buffered=16)
