"""Delivery above the transaction horizon (ADR 0006, part A): an open transaction holds
back only the stored cursor, never delivery; a restart from that cursor duplicates
nothing; long-lived transactions interleaved with the gap race lose, double and reorder
nothing."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event

from .helpers import eventually, locked_payload, uid
from .test_consumer_invariants import CURSOR_AHEAD, KILLED_LEASE, Worker

pytestmark = pytest.mark.anyio

CURSOR = (
    "SELECT last_xid::text::bigint AS xid, last_position FROM dispatcher_cursor WHERE consumer = $1"
)


async def _hold_xid(conn: asyncpg.Connection) -> tuple[asyncpg.transaction.Transaction, int]:
    """Open a write transaction that has a transaction id and stays open."""
    tx = conn.transaction()
    await tx.start()
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS hold (x int)")
    await conn.execute("INSERT INTO hold VALUES (1)")
    xid = int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))
    return tx, xid


async def test_events_are_delivered_while_an_unrelated_transaction_stays_open(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_dsn: str
) -> None:
    handled: list[str] = []
    consumer = Consumer(dispatch_pool, name="above", poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        handled.append(event.event_id)

    holder = await asyncpg.connect(dispatch_dsn)
    try:
        async with consumer:
            tx, held_xid = await _hold_xid(holder)
            published = [
                (
                    await dispatcher.publish(
                        "credit.locked", locked_payload(), subject=uid("per"), actor="system:t"
                    )
                ).event_id
                for _ in range(20)
            ]
            # Delivered while the transaction stays open.
            await eventually(lambda: len(handled) == 20, within=10, what="delivery")
            assert sorted(handled) == sorted(published)

            # The cursor may move over what was stored before the transaction began, but
            # never past its id: a restart must still find its rows.
            for _ in range(5):
                # Each read first stores the cursors that moved.
                seen = consumer.stats.fetches
                await eventually(
                    lambda s=seen: consumer.stats.fetches >= s + 2, within=5, what="reads"
                )
                row = await dispatch_pool.fetchrow(CURSOR, "above")
                assert row["xid"] <= held_xid
            assert await dispatch_pool.fetchval(CURSOR_AHEAD, "above") == 0
            top = await dispatch_pool.fetchval("SELECT max(position) FROM dispatcher_event")
            await tx.rollback()

            async def caught_up() -> bool:
                row = await dispatch_pool.fetchrow(CURSOR, "above")
                return bool(row["last_position"] == top)

            await eventually(caught_up, within=10, what="the cursor to catch up")
            assert consumer.stats.handled == 20
    finally:
        await holder.close()


async def test_kill_9_while_handling_above_the_horizon_duplicates_nothing(
    dispatch_dsn: str, tmp_path: Path
) -> None:
    pool = await asyncpg.create_pool(dispatch_dsn, min_size=2, max_size=6)
    await pool.execute("CREATE TABLE effects (event_id text PRIMARY KEY)")
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    holder = await asyncpg.connect(dispatch_dsn)
    log = tmp_path / "worker.log"
    subjects = [uid("per") for _ in range(10)]
    published: list[str] = []

    async def effects() -> int:
        return int(await pool.fetchval("SELECT count(*) FROM effects"))

    async def publish(n: int) -> None:
        for i in range(n):
            envelope = await dispatcher.publish(
                "credit.locked", locked_payload(), subject=subjects[i % 10], actor="system:t"
            )
            published.append(envelope.event_id)

    try:
        tx, held_xid = await _hold_xid(holder)
        worker = await Worker.start(dispatch_dsn, log, "--max-sleep-ms", "20", *KILLED_LEASE)
        try:
            await publish(200)
            await eventually(lambda: _at_least(pool, 60), within=20, what="some effects")
            # The stored cursor stays below the open transaction: everything handled so
            # far lies above it, and the restart reads it all again.
            row = await pool.fetchrow(CURSOR, "effects")
            assert row is None or row["xid"] <= held_xid
        finally:
            await worker.kill()
        before = await effects()
        await tx.commit()
        worker = await Worker.start(dispatch_dsn, log, *KILLED_LEASE)
        try:
            await eventually(
                lambda: _count_is(pool, "SELECT count(*) FROM effects", 200),
                within=30,
                what="the restart to finish",
            )
            stats = await _settle(pool)
        finally:
            restarted = await worker.terminate()
        assert stats == (200, 200, 200)
        assert {r[0] for r in await pool.fetch("SELECT event_id FROM effects")} == set(published)
        # What the first process had handled above the cursor came back as dedup hits.
        assert restarted["handled"] == 200 - before
        assert restarted["dedup_hits"] >= before
    finally:
        await holder.close()
        await pool.close()


async def _at_least(pool: asyncpg.Pool, n: int) -> bool:
    return int(await pool.fetchval("SELECT count(*) FROM effects")) >= n


async def _count_is(pool: asyncpg.Pool, sql: str, expected: int) -> bool:
    return int(await pool.fetchval(sql)) == expected


async def _settle(pool: asyncpg.Pool) -> tuple[int, int, int]:
    rows = int(await pool.fetchval("SELECT count(*) FROM effects"))
    distinct = int(await pool.fetchval("SELECT count(DISTINCT event_id) FROM effects"))
    dedup = int(
        await pool.fetchval("SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'effects'")
    )
    return rows, distinct, dedup


async def test_long_transactions_interleaved_with_the_gap_race(dispatch_dsn: str) -> None:
    """1,000 gap-race rounds (A inserts first, commits after B) while long-lived
    transactions open and close around them, some publishing (commit or roll back), some
    only holding an id: 0 lost, 0 doubled, 0 reordered per subject."""
    rounds, parallel = 1000, 6
    rng = random.Random()
    producers = await asyncpg.create_pool(dispatch_dsn, min_size=4, max_size=2 * parallel + 4)
    consumer_pool = await asyncpg.create_pool(dispatch_dsn, min_size=2, max_size=8)
    dispatcher = Dispatcher(producers, producer="tests", tenant_id="tnt_tests")
    subjects = [uid("per") for _ in range(24)]
    handled: list[tuple[str, int, str]] = []
    committed: set[str] = set()
    rolled_back: set[str] = set()
    consumer = Consumer(
        consumer_pool, name="long", concurrency=4, batch_size=50, poll_interval=0.05
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        handled.append((event.subject or "", 0, event.event_id))

    async def publish(conn: asyncpg.Connection, subject: str) -> str:
        envelope = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=subject, actor="system:t", conn=conn
        )
        return envelope.event_id

    async def one_round(lane: int) -> None:
        # Each lane's rounds follow one another: its subjects get events in a known order
        # without lanes waiting on each other's subject locks.
        s_a, s_b = subjects[2 * lane], subjects[2 * lane + 1]
        async with producers.acquire() as a, producers.acquire() as b:
            tx_a = a.transaction()
            await tx_a.start()
            try:
                a_id = await publish(a, s_a)
                await asyncio.sleep(rng.uniform(0, 0.002))
                async with b.transaction():
                    b_id = await publish(b, s_b)
                committed.add(b_id)
                await asyncio.sleep(rng.uniform(0, 0.002))
            except BaseException:
                await tx_a.rollback()
                raise
            if rng.random() < 0.1:
                await tx_a.rollback()
                rolled_back.add(a_id)
            else:
                await tx_a.commit()
                committed.add(a_id)

    stop = asyncio.Event()

    async def long_lived(k: int) -> None:
        # Early-xid or plain long transactions: they take an id, maybe publish (on a
        # subject of their own, so they do not stall the rounds on its lock), wait.
        while not stop.is_set():
            async with producers.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                await conn.execute("SELECT pg_current_xact_id()")
                ids = []
                if rng.random() < 0.6:
                    for _ in range(rng.randint(1, 3)):
                        await asyncio.sleep(rng.uniform(0, 0.05))
                        ids.append(await publish(conn, subjects[-1 - k]))
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                if rng.random() < 0.8:
                    await tx.commit()
                    committed.update(ids)
                else:
                    await tx.rollback()
                    rolled_back.update(ids)

    try:
        async with consumer:
            holders = [asyncio.create_task(long_lived(k)) for k in range(3)]
            queue = iter(range(rounds))

            async def lane(n: int) -> None:
                for _ in queue:
                    await one_round(n)

            try:
                await asyncio.wait_for(asyncio.gather(*(lane(n) for n in range(parallel))), 100)
            finally:
                stop.set()
                await asyncio.gather(*holders)
            await asyncio.wait_for(consumer.wait_idle(), 30)
        positions = {
            r["event_id"]: r["position"]
            for r in await producers.fetch(
                "SELECT event_id, position FROM dispatcher_event WHERE event_type = $1",
                "credit.locked",
            )
        }
    finally:
        await producers.close()
        await consumer_pool.close()

    ids = [event_id for _, _, event_id in handled]
    assert len(ids) == len(set(ids)), "an event was handled twice"
    assert set(ids) == committed, f"lost: {len(committed - set(ids))}"
    assert not rolled_back & set(ids)
    last: dict[str, int] = {}
    inversions = 0
    for subject, _, event_id in handled:
        position = positions[event_id]
        if position < last.get(subject, 0):
            inversions += 1
        last[subject] = position
    assert inversions == 0
