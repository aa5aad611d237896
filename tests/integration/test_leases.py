"""Members, leases and the fence (ADR 0006) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import asyncpg
import pytest

from dispatch_aio import Dispatcher
from dispatch_aio._consume._members import Members
from dispatch_aio._consume.assignment import PARTITION_COUNT, assign, moves_for
from dispatch_aio._consume.leases_store import LeaseStore
from dispatch_aio._errors import LeaseLostError

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio

CONSUMER = "coaching"


def stores(*names: str, lease_timeout: float = 10.0) -> list[LeaseStore]:
    return [LeaseStore("public", CONSUMER, f"{n}:1", lease_timeout=lease_timeout) for n in names]


async def expire(conn: asyncpg.Connection, store: LeaseStore) -> None:
    """What lease_timeout of silence does: the member's expiry is in the past."""
    await conn.execute(
        "UPDATE dispatcher_member SET expires_at = now() - interval '1 second'"
        " WHERE consumer = $1 AND member_id = $2",
        store.consumer,
        store.member_id,
    )


async def settle(conn: asyncpg.Connection, members: list[LeaseStore]) -> dict[str, dict[int, int]]:
    """Each member acquires what the shared target gives it; returns member -> epochs."""
    view = await members[0].view(conn)
    target = assign(view.live_members(), view.owners())
    for store in members:
        moves = moves_for(store.member_id, view.owners(), target)
        await store.release(conn, moves.release)
    for store in members:
        moves = moves_for(store.member_id, (await store.view(conn)).owners(), target)
        await store.acquire(conn, moves.acquire)
    view = await members[0].view(conn)
    return {s.member_id: view.held_by(s.member_id) for s in members}


async def test_two_members_split_the_partitions_and_cannot_take_held_ones(
    dispatch_pool: asyncpg.Pool,
) -> None:
    a, b = stores("a", "b")
    async with dispatch_pool.acquire() as conn:
        await a.join(conn)
        alone = await settle(conn, [a])
        assert len(alone[a.member_id]) == PARTITION_COUNT
        await b.join(conn)
        view = await b.view(conn)
        assert view.live_members() == [a.member_id, b.member_id]
        # Nothing is free yet: b takes nothing until a hands its share back.
        assert await b.acquire(conn, range(PARTITION_COUNT)) == {}
        held = await settle(conn, [a, b])
        assert len(held[a.member_id]) == len(held[b.member_id]) == PARTITION_COUNT // 2
        assert not set(held[a.member_id]) & set(held[b.member_id])
        # a kept its lower half untouched; b's partitions were acquired once (epoch 1 -> 2).
        assert set(held[b.member_id].values()) == {2}
        assert set(held[a.member_id].values()) == {1}


async def test_preparing_a_connection_writes_and_locks_nothing(
    dispatch_pool: asyncpg.Pool,
) -> None:
    # Readies a worker's connection for its groups' outcome statement: even for a member
    # that holds nothing (and one that is not registered), nothing is fenced or written.
    a, b = stores("a", "b")
    async with dispatch_pool.acquire() as conn, dispatch_pool.acquire() as other:
        await a.join(conn)
        held = await settle(conn, [a])
        await b.prepare(other)
        await a.prepare(other)
        assert not other.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM dispatcher_dedup") == 0
        # No lock is left behind: the owner's takeover-guarding locks are free.
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
        assert (await a.view(conn)).held_by(a.member_id) == held[a.member_id]


async def test_recording_outcomes_answers_with_the_markers_that_did_not_go_in(
    dispatch_pool: asyncpg.Pool,
) -> None:
    """A group's markers carry each event's outcome; only the events another process
    marked first come back, so a group handled here gets no row at all."""
    (a,) = stores("a")
    async with dispatch_pool.acquire() as conn:
        await a.join(conn)
        held = (await settle(conn, [a]))[a.member_id]
        done_elsewhere, handled, dead = uid("evt"), uid("evt"), uid("evt")
        assert await a.record_outcomes_fenced(conn, [done_elsewhere], [], held) == set()
        async with conn.transaction():
            missing = await a.record_outcomes_fenced(
                conn, [handled, done_elsewhere, dead], [dead], held
            )
        assert missing == {done_elsewhere}
        rows = await conn.fetch("SELECT event_id, outcome FROM dispatcher_dedup")
        assert dict(rows) == {
            done_elsewhere: "handled",
            handled: "handled",
            dead: "dead_lettered",
        }


async def test_an_expired_member_loses_its_leases_and_its_fence(
    dispatch_pool: asyncpg.Pool,
) -> None:
    a, b = stores("a", "b")
    async with dispatch_pool.acquire() as conn, dispatch_pool.acquire() as stale:
        await a.join(conn)
        await b.join(conn)
        held = await settle(conn, [a, b])
        mine = held[a.member_id]
        await expire(conn, a)
        view = await b.view(conn)
        assert view.live_members() == [b.member_id]
        assert set(view.owners().values()) == {b.member_id, None}
        taken = await b.acquire(conn, mine)
        assert taken == {p: e + 1 for p, e in mine.items()}
        # a wakes up (GC pause, SIGSTOP) and tries to commit an outcome: refused.
        async with stale.transaction():
            with pytest.raises(LeaseLostError, match="no longer holds") as lost:
                await a.record_outcomes_fenced(stale, [uid("evt")], [], mine)
            assert set(lost.value.partitions) == set(mine)
        assert await stale.fetchval("SELECT count(*) FROM dispatcher_dedup") == 0
        # Nor can it count a failed attempt there (which would dead-letter it early).
        partition, epoch = next(iter(mine.items()))
        with pytest.raises(LeaseLostError, match="no longer holds"):
            await a.record_attempt_fenced(stale, uid("evt"), 1, "boom", partition, epoch)
        assert await stale.fetchval("SELECT count(*) FROM dispatcher_attempt") == 0
        # The owner can.
        event_id = uid("evt")
        await b.record_attempt_fenced(stale, event_id, 1, "boom", partition, epoch + 1)
        assert (
            await stale.fetchval(
                "SELECT attempts FROM dispatcher_attempt WHERE event_id = $1", event_id
            )
            == 1
        )
        # ... and it cannot take anything back while it is expired.
        assert await a.acquire(conn, mine) == {}
        # A heartbeat revives the member row; leases stay with b.
        assert await a.heartbeat(conn) is not None
        assert (await a.view(conn)).held_by(a.member_id) == {}


async def test_a_takeover_waits_for_an_outcome_that_passed_its_fence(
    dispatch_pool: asyncpg.Pool,
) -> None:
    a, b = stores("a", "b")
    async with (
        dispatch_pool.acquire() as conn,
        dispatch_pool.acquire() as owner,
        dispatch_pool.acquire() as taker,
    ):
        await a.join(conn)
        held = (await settle(conn, [a]))[a.member_id]
        await b.join(conn)
        partition = 7
        event_id = uid("evt")
        tx = owner.transaction()
        await tx.start()
        epochs = {partition: held[partition]}
        missing = await a.record_outcomes_fenced(owner, [event_id], [], epochs)
        assert missing == set()
        await expire(conn, a)
        takeover = asyncio.ensure_future(b.acquire(taker, [partition]))

        async def waiting() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
            )

        await eventually(waiting, within=10, what="the takeover to wait for the fence")
        assert not takeover.done()
        await tx.commit()
        assert await takeover == {partition: held[partition] + 1}
        # The new owner reads after its acquisition committed: it sees the marker.
        assert await taker.fetchval(
            "SELECT count(*) FROM dispatcher_dedup WHERE event_id = $1", event_id
        )


async def test_a_paused_owner_after_its_fence_is_cut_off_not_waited_for(
    dispatch_pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    a, b = stores("a", "b", lease_timeout=2.0)  # the fence allows 1 s idle before COMMIT
    async with (
        dispatch_pool.acquire() as conn,
        dispatch_pool.acquire() as taker,
    ):
        paused = await asyncpg.connect(dispatch_dsn)
        try:
            await conn.execute("CREATE TABLE effects (id text)")
            await a.join(conn)
            held = (await settle(conn, [a]))[a.member_id]
            await b.join(conn)
            tx = paused.transaction()
            await tx.start()
            await paused.execute("INSERT INTO effects VALUES ('written by the paused owner')")
            await a.fence(paused, {3: held[3]})
            await expire(conn, a)
            # The owner now sits idle in its transaction, as under SIGSTOP: the server
            # ends its session, the takeover goes through, its writes are rolled back.
            assert await b.acquire(taker, [3], lock_timeout=30) == {3: held[3] + 1}
            lost = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
            with pytest.raises((*lost, OSError)):
                await tx.commit()
            assert await conn.fetchval("SELECT count(*) FROM effects") == 0
        finally:
            paused.terminate()


async def test_repeatable_read_outcomes_are_fenced_by_the_row(
    dispatch_pool: asyncpg.Pool,
) -> None:
    a, b = stores("a", "b")
    async with dispatch_pool.acquire() as conn, dispatch_pool.acquire() as owner:
        await a.join(conn)
        held = (await settle(conn, [a]))[a.member_id]
        await b.join(conn)
        async with owner.transaction(isolation="repeatable_read"):
            await owner.fetchval("SELECT 1")  # the snapshot is taken here
            await expire(conn, a)
            await b.acquire(conn, [5])
            with pytest.raises((LeaseLostError, asyncpg.SerializationError)):
                await a.fence(owner, {5: held[5]})


async def test_release_leave_and_expire(dispatch_pool: asyncpg.Pool) -> None:
    a, b = stores("a", "b")
    async with dispatch_pool.acquire() as conn:
        await a.join(conn)
        await b.join(conn)
        held = await settle(conn, [a, b])
        released = await a.release(conn, list(held[a.member_id])[:3])
        assert len(released) == 3
        assert await b.acquire(conn, released) == {p: held[a.member_id][p] + 1 for p in released}
        assert await b.leave(conn) == PARTITION_COUNT // 2 + 3
        view = await a.view(conn)
        assert view.live_members() == [a.member_id]
        assert len([o for o in view.owners().values() if o is None]) == PARTITION_COUNT // 2 + 3
        await expire(conn, a)
        freed = await a.expire(conn)
        assert len(freed) == PARTITION_COUNT // 2 - 3
        assert await a.heartbeat(conn) is None  # removed: it must rejoin


async def test_partition_cursors_fall_back_and_never_move_backwards(
    dispatch_pool: asyncpg.Pool,
) -> None:
    store = LeaseStore("public", CONSUMER, "a:1")
    async with dispatch_pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO dispatcher_cursor (consumer, event_type, last_xid, last_position)"
            " VALUES ($1, 'credit.locked', '900', 40)",
            CONSUMER,
        )
        cursors = await store.read_cursors(conn, ["credit.locked", "credit.released"], [0, 9])
        assert cursors[("credit.locked", 9)] == (900, 40)
        assert cursors[("credit.released", 0)] == (0, 0)
        await store.advance_cursors(conn, {("credit.locked", 9): (950, 3)})
        await store.advance_cursors(conn, {("credit.locked", 9): (920, 99)})
        cursors = await store.read_cursors(conn, ["credit.locked"], [0, 9])
        assert cursors[("credit.locked", 9)] == (950, 3)
        assert cursors[("credit.locked", 0)] == (900, 40)


async def test_events_carry_the_partition_of_their_subject(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    subjects = [uid("per") for _ in range(40)]
    await dispatcher.publish_many(
        [
            {
                "event_type": "credit.locked",
                "payload": locked_payload(),
                "subject": s,
                "actor": "system:tests",
            }
            for s in subjects
        ]
    )
    rows = await dispatch_pool.fetch(
        "SELECT subject, partition, dispatcher_partition(subject) AS expected,"
        " get_byte(sha256(convert_to(subject, 'UTF8')), 0) AS byte FROM dispatcher_event"
    )
    assert len(rows) == 40
    assert all(r["partition"] == r["expected"] == r["byte"] for r in rows)
    assert len({r["partition"] for r in rows}) > 10


async def test_partition_status_shows_owners_unowned_partitions_and_lag(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    a, b = stores("a", "b")
    subjects = [uid("per") for _ in range(30)]
    await dispatcher.publish_many(
        [
            {
                "event_type": "credit.locked",
                "payload": locked_payload(),
                "subject": s,
                "actor": "system:tests",
            }
            for s in subjects
        ]
    )
    async with dispatch_pool.acquire() as conn:
        await a.join(conn)
        await b.join(conn)
        held = await settle(conn, [a, b])
        await expire(conn, b)
        first = await conn.fetchrow(
            "SELECT partition, xid::text::bigint AS xid, position FROM dispatcher_event"
            " ORDER BY position LIMIT 1"
        )
        # That partition's cursor has passed its first event.
        await a.advance_cursors(
            conn, {("credit.locked", first["partition"]): (first["xid"], first["position"])}
        )
        status = await a.partition_status(conn, ["credit.locked"])
    assert len(status) == PARTITION_COUNT
    assert {s.partition for s in status if s.owner == a.member_id} == set(held[a.member_id])
    assert {s.partition for s in status if s.owner is None} == set(held[b.member_id])
    assert sum(s.lag for s in status) == 29


async def test_a_step_beaten_to_part_of_its_share_looks_again_soon(
    dispatch_pool: asyncpg.Pool,
) -> None:
    """Another member takes a partition between the view a step planned from and the
    step's acquisition: the plan is out of date, and a partition it left free must not
    wait a whole heartbeat for an owner (one did, 1.01 s, in a rolling restart)."""
    a, b = stores("a", "b")
    heartbeat = 1.0

    async def no_change(conn: asyncpg.Connection, gained: set[int]) -> None:
        return None

    members = Members(
        a,
        heartbeat=heartbeat,
        step_limit=5.0,
        connection=lambda: dispatch_pool.acquire(),
        busy=set,
        backlog=dict,
        running=set,
        on_change=no_change,
        on_lost=lambda lost: None,
        log_extra={},
    )
    real_acquire = a.acquire
    beaten: dict[int, int] = {}

    async def acquire_after_b(
        conn: asyncpg.Connection, partitions: Iterable[int], *, lock_timeout: float = 5.0
    ) -> dict[int, int]:
        # Between a's view and a's acquisition, b takes the first of them (for real).
        wanted = sorted(partitions)
        beaten.update(await b.acquire(conn, wanted[:1]))
        return await real_acquire(conn, wanted, lock_timeout=lock_timeout)

    async with dispatch_pool.acquire() as conn:
        await a.join(conn)
        await b.join(conn)
        a.acquire = acquire_after_b  # type: ignore[method-assign]
        delay = await members.step(conn)
        assert beaten
        assert not set(beaten) & set(members.owned)
        assert members.owned  # the rest was taken
        assert delay <= heartbeat / 10
        # Without the race the next step keeps the heartbeat's pace.
        a.acquire = real_acquire  # type: ignore[method-assign]
        assert await members.step(conn) > heartbeat / 10
