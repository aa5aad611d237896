"""consumer_fetch_streams with horizon.Stream: the read of ADR 0006 on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random

import anyio
import asyncpg
import pytest

from dispatch_aio import Dispatcher
from dispatch_aio._consume.horizon import Key, Stream
from dispatch_aio._consume.streams_store import StreamsStore, partition_mask

from .helpers import eventually, example, locked_payload, uid

pytestmark = pytest.mark.anyio

TYPES = ["credit.locked"]
#: What the read sets for its own transaction (consumer_fetch_streams_begin).
SETTINGS = ("plan_cache_mode", "enable_seqscan")


class Reader:
    """A stream and its store; every row read counts as handled at once."""

    def __init__(self, cursor: Key = (0, 0), partitions: set[int] | None = None) -> None:
        self.store = StreamsStore("public", "coaching", TYPES)
        self.stream = Stream(frontier=cursor)
        self.mask = partition_mask(partitions)
        self.read_ids: list[str] = []
        self.rows_read = 0

    async def read(self, conn: asyncpg.Connection, limit: int = 100) -> list[str]:
        result = await self.store.fetch(conn, [(self.stream.plan(), self.mask)], limit)
        got = result.streams[0]
        self.stream.advance(result.snapshot, got.watched_keys, got.range_keys, limit)
        rows = got.watched_rows + (got.range_rows or []) + got.pulled
        self.rows_read += len(rows)
        ids = [r["event_id"] for r in rows if r["event_id"] not in self.read_ids]
        self.read_ids.extend(ids)
        return ids

    async def read_all(self, conn: asyncpg.Connection, limit: int = 100) -> list[str]:
        ids: list[str] = []
        while True:
            ids += await self.read(conn, limit)
            if self.stream.caught_up and not self.stream.drain:
                return ids


async def publish(
    dispatcher: Dispatcher,
    n: int,
    conn: asyncpg.Connection | None = None,
    subject: str | None = None,
) -> list[str]:
    envelopes = await dispatcher.publish_many(
        [
            {
                "event_type": "credit.locked",
                "payload": locked_payload(),
                "subject": subject or uid("per"),
                "actor": "system:tests",
            }
            for _ in range(n)
        ],
        conn=conn,
    )
    return [e.event_id for e in envelopes]


async def test_delivery_goes_on_while_an_unrelated_write_transaction_stays_open(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    reader = Reader()
    async with dispatch_pool.acquire() as conn, dispatch_pool.acquire() as holder:
        await holder.execute("CREATE TABLE unrelated (id int)")
        tx = holder.transaction()
        await tx.start()
        await holder.execute("INSERT INTO unrelated VALUES (1)")
        open_xid = int(await holder.fetchval("SELECT pg_current_xact_id()::text"))
        published = []
        for _ in range(5):
            published += await publish(dispatcher, 20)
            await reader.read_all(conn, limit=7)
        assert sorted(reader.read_ids) == sorted(published)
        # Only the stored cursor waits: it never passes the open transaction.
        assert reader.stream.low_water() <= (open_xid, 0)
        assert open_xid in reader.stream.watched
        # Polls while it stays open read nothing again.
        before = reader.rows_read
        for _ in range(5):
            assert await reader.read(conn) == []
        assert reader.rows_read == before
        await tx.commit()
        await reader.read_all(conn)
        assert reader.stream.watched == set()
        assert reader.stream.low_water() > (open_xid, 0)


async def test_the_read_leaves_its_plan_settings_and_no_transaction_behind(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    published = await publish(dispatcher, 5)
    async with dispatch_pool.acquire() as conn:
        defaults = [await conn.fetchval(f"SHOW {name}") for name in SETTINGS]
        assert sorted(await Reader().read_all(conn)) == sorted(published)
        assert not conn.is_in_transaction()
        assert [await conn.fetchval(f"SHOW {name}") for name in SETTINGS] == defaults


async def test_a_read_cancelled_by_its_scope_leaves_no_transaction_open(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    # The consumer stops its read loop with a cancel scope: every await inside it is
    # cancelled, the read's own rollback included, unless that rollback is shielded.
    await publish(dispatcher, 3)
    reader = Reader()
    async with dispatch_pool.acquire() as conn, dispatch_pool.acquire() as locker:
        # The read waits for the lock, so it is cancelled mid-statement.
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE dispatcher_event IN ACCESS EXCLUSIVE MODE")
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = $1"
        pid = conn.get_server_pid()

        async def blocked() -> bool:
            return bool(await locker.fetchval(waiting, pid))

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.read, conn)
            await eventually(blocked, within=10, what="the read to wait for the lock")
            tg.cancel_scope.cancel()
        await tx.rollback()
        assert conn.is_closed() or not conn.is_in_transaction()
        if not conn.is_closed():
            assert await conn.fetchval("SELECT 1") == 1


async def test_an_early_xid_producer_is_read_once_when_it_commits(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    reader = Reader()
    subject = uid("per")
    async with dispatch_pool.acquire() as conn, dispatch_pool.acquire() as early:
        tx = early.transaction()
        await tx.start()
        early_xid = int(await early.fetchval("SELECT pg_current_xact_id()::text"))
        first = await publish(dispatcher, 3, subject=subject)  # commits after early took its id
        assert await reader.read_all(conn) == first
        late = await publish(dispatcher, 4, conn=early, subject=subject)
        assert await reader.read_all(conn) == []
        await tx.commit()
        got = await reader.read_all(conn, limit=2)  # drains the ended id over three reads
        assert got == late
        assert reader.stream.watched == set()
        assert early_xid < reader.stream.frontier[0]
        # Handled in subject order: positions ascend over the whole subject.
        rows = await conn.fetch(
            "SELECT event_id FROM dispatcher_event WHERE subject = $1 ORDER BY position", subject
        )
        assert [r["event_id"] for r in rows] == first + late


async def test_a_later_commit_with_an_earlier_xid_is_pulled_forward(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    reader = Reader()
    subject = uid("per")
    async with dispatch_pool.acquire() as conn, dispatch_pool.acquire() as early:
        tx = early.transaction()
        await tx.start()
        await early.fetchval("SELECT pg_current_xact_id()")
        await reader.read_all(conn)  # the early id is watched from now on
        committed_first = await publish(dispatcher, 1, subject=subject)  # larger xid
        await publish(dispatcher, 1, conn=early, subject=subject)  # smaller xid, later position
        await tx.commit()
        result = await reader.store.fetch(conn, [(reader.stream.plan(), None)], 1)
        got = result.streams[0]
        # The batch of one holds the early transaction's event (kind 0, smaller xid); the
        # event of its subject that committed before it comes with it, pulled forward.
        assert [r["event_id"] for r in got.pulled] == committed_first


async def test_partition_masks_split_the_events_exactly(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    published = await publish(dispatcher, 60)
    # An event from before the migration: no stored partition, computed on read.
    await dispatch_pool.execute(
        "UPDATE dispatcher_event SET partition = NULL WHERE event_id = $1", published[0]
    )
    low, high = Reader(partitions=set(range(128))), Reader(partitions=set(range(128, 256)))
    async with dispatch_pool.acquire() as conn:
        await low.read_all(conn, limit=9)
        await high.read_all(conn, limit=9)
        assert sorted(low.read_ids + high.read_ids) == sorted(published)
        assert not set(low.read_ids) & set(high.read_ids)
        partitions = {
            r["event_id"]: r["partition"]
            for r in await conn.fetch(
                "SELECT event_id, dispatcher_partition(subject) AS partition FROM dispatcher_event"
            )
        }
        assert all(partitions[i] < 128 for i in low.read_ids)


async def test_floors_skip_each_partitions_rows_at_or_below_its_own_cursor(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    """A catch-up stream starts at the lowest of its partitions' cursors and skips, in
    the statement, each row at or below its own partition's floor; a second stream in
    the same read without floors reads its rows all, and a caught-up stream drops them."""
    published = [i for _ in range(20) for i in await publish(dispatcher, 3, subject=uid("per"))]
    async with dispatch_pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT event_id, xid::text::bigint AS xid, position, "
            "coalesce(partition, dispatcher_partition(subject)) AS partition "
            "FROM dispatcher_event ORDER BY xid, position"
        )
        assert [r["event_id"] for r in rows] == published
        low = {r["partition"] for r in rows if r["partition"] < 128}
        # Each low partition's floor: its own second row (or its only one).
        floors: dict[int, Key] = {}
        for p in low:
            own = [r for r in rows if r["partition"] == p]
            floors[p] = (own[min(1, len(own) - 1)]["xid"], own[min(1, len(own) - 1)]["position"])
        expected = {
            r["event_id"]
            for r in rows
            if r["partition"] in low and (r["xid"], r["position"]) > floors[r["partition"]]
        }
        catchup = Stream(frontier=(0, 0), floors=dict(floors))
        plain = Stream(frontier=(0, 0))
        store = StreamsStore("public", "coaching", TYPES)
        masks = [partition_mask(low), partition_mask(set(range(128, 256)))]
        result = await store.fetch(
            conn, [(catchup.plan(), masks[0]), (plain.plan(), masks[1])], 1000
        )
        got, other = result.streams
        assert {r["event_id"] for r in got.range_rows or ()} == expected
        assert 0 < len(expected) < len([r for r in rows if r["partition"] in low])
        assert {r["event_id"] for r in other.range_rows or ()} == {
            r["event_id"] for r in rows if r["partition"] >= 128
        }
        catchup.advance(result.snapshot, got.watched_keys, got.range_keys, 1000)
        assert catchup.caught_up
        assert not catchup.floors


def test_partition_mask_bits() -> None:
    assert partition_mask(None) is None
    mask = partition_mask([0, 9, 255])
    assert mask is not None
    assert len(mask) == 32
    assert mask[0] == 1
    assert mask[1] == 2
    assert mask[31] == 128
    with pytest.raises(ValueError, match="outside"):
        partition_mask([256])


async def test_concurrent_transactions_lose_double_and_reorder_nothing(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    """Real snapshots: producers race on five subjects (early ids, savepoints, rollbacks,
    one transaction open the whole time) while a reader hands rows out as it reads."""
    rng = random.Random(7)
    subjects = [uid("per") for _ in range(5)]
    handled: list[tuple[str, str]] = []  # (subject, event_id) in the order handed out
    reader = Reader()
    done = asyncio.Event()

    async def produce(rounds: int) -> None:
        async with dispatch_pool.acquire() as conn:
            for _ in range(rounds):
                # One subject per transaction: two subject locks taken in opposite
                # orders would deadlock the producers (as they would any application).
                subject = rng.choice(subjects)
                tx = conn.transaction()
                await tx.start()
                if rng.random() < 0.3:
                    await conn.fetchval("SELECT pg_current_xact_id()")  # an early id
                    await asyncio.sleep(rng.random() / 200)
                if rng.random() < 0.2:
                    async with conn.transaction():  # a savepoint that is kept
                        await publish(dispatcher, 1, conn=conn, subject=subject)
                if rng.random() < 0.2:
                    savepoint = conn.transaction()
                    await savepoint.start()
                    await publish(dispatcher, 1, conn=conn, subject=subject)
                    await savepoint.rollback()
                await publish(dispatcher, rng.randint(1, 3), conn=conn, subject=subject)
                await asyncio.sleep(rng.random() / 200)
                if rng.random() < 0.1:
                    await tx.rollback()
                else:
                    await tx.commit()

    async def read() -> None:
        async with dispatch_pool.acquire() as conn:
            while True:
                finished = done.is_set()
                result = await reader.store.fetch(conn, [(reader.stream.plan(), None)], 4)
                got = result.streams[0]
                reader.stream.advance(result.snapshot, got.watched_keys, got.range_keys, 4)
                rows = got.watched_rows + (got.range_rows or []) + got.pulled
                seen = {e for _, e in handled}
                for row in sorted(rows, key=lambda r: r["position"]):
                    if row["event_id"] not in seen:
                        seen.add(row["event_id"])
                        handled.append((row["subject"], row["event_id"]))
                if finished and reader.stream.caught_up and not reader.stream.watched:
                    return
                await asyncio.sleep(0.001)

    async with dispatch_pool.acquire() as holder:
        long_tx = holder.transaction()
        await long_tx.start()
        await holder.fetchval("SELECT pg_current_xact_id()")
        reading = asyncio.create_task(read())
        await asyncio.gather(*(produce(25) for _ in range(4)))
        await publish(dispatcher, 2, conn=holder, subject=subjects[0])
        await long_tx.commit()
    done.set()
    await asyncio.wait_for(reading, 60)

    rows = await dispatch_pool.fetch(
        "SELECT subject, event_id FROM dispatcher_event ORDER BY position"
    )
    assert len(rows) > 100
    # 0 lost, 0 doubled:
    assert sorted(e for _, e in handled) == sorted(r["event_id"] for r in rows)
    for subject in subjects:
        in_order = [r["event_id"] for r in rows if r["subject"] == subject]
        assert [e for s, e in handled if s == subject] == in_order  # 0 reordered


async def test_the_read_of_one_plain_stream_answers_as_the_general_read_does(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    """consumer_fetch_range is consumer_fetch_streams for one stream with nothing watched
    and no floors: over two types, partition masks, batch limits that cut through a
    subject, rows pulled forward for an early transaction's events, rows with a marker
    and rows with failed attempts, both give the same rows, kinds and snapshot."""
    types = ["credit.locked", "credit.reserved"]
    subjects = [uid("per") for _ in range(6)]
    async with dispatch_pool.acquire() as conn, dispatch_pool.acquire() as early:
        tx = early.transaction()
        await tx.start()
        await early.fetchval("SELECT pg_current_xact_id()")
        for i, subject in enumerate(subjects * 3):
            event_type = types[i % 2]
            await dispatcher.publish_many(
                [
                    {
                        "event_type": event_type,
                        "payload": locked_payload() if i % 2 == 0 else example(event_type),
                        "subject": subject,
                        "actor": "system:tests",
                    }
                ]
            )
        # Committed after the others with a smaller id: out of order, so a read of them
        # pulls the later-id events of their subjects forward.
        await publish(dispatcher, 2, conn=early, subject=subjects[0])
        await publish(dispatcher, 1, conn=early, subject=subjects[3])
        await tx.commit()
        rows = await conn.fetch(
            "SELECT event_id, xid::text::bigint AS xid, position, out_of_order"
            " FROM dispatcher_event ORDER BY xid, position"
        )
        assert sum(r["out_of_order"] for r in rows) == 3
        await conn.execute(
            "INSERT INTO dispatcher_dedup (consumer, event_id, outcome)"
            " VALUES ('coaching', $1, 'handled'), ('coaching', $2, 'dead_lettered')",
            rows[1]["event_id"],
            rows[7]["event_id"],
        )
        store = StreamsStore("public", "coaching", types)
        q = store.q

        async def attempts_read() -> list[dict[str, int | None]]:
            general = await conn.fetch(
                q.consumer_fetch_streams, types, [0], [0], [None], [], [], [], 100,
                "coaching", [], [],
            )  # fmt: skip
            plain = await conn.fetch(q.consumer_fetch_range, types, 0, 0, None, 100, "coaching")
            return [
                {r["event_id"]: r["attempts"] for r in answer if r["kind"] != 3}
                for answer in (general, plain)
            ]

        # No attempts rows for this consumer (another consumer's do not count): none read.
        await conn.execute(
            "INSERT INTO dispatcher_attempt (consumer, event_id, attempts, last_error)"
            " VALUES ('someone-else', $1, 5, 'boom')",
            rows[4]["event_id"],
        )
        for answer in await attempts_read():
            assert len(answer) == len(rows)
            assert set(answer.values()) == {None}
        await conn.execute(
            "INSERT INTO dispatcher_attempt (consumer, event_id, attempts, last_error)"
            " VALUES ('coaching', $1, 2, 'boom')",
            rows[4]["event_id"],
        )
        for answer in await attempts_read():
            assert {k: v for k, v in answer.items() if v is not None} == {rows[4]["event_id"]: 2}
        partitions = {
            r["partition"]
            for r in await conn.fetch(
                "SELECT dispatcher_partition(subject) AS partition FROM dispatcher_event"
            )
        }
        masks = [None, partition_mask(set(sorted(partitions)[::2])), partition_mask(set())]
        frontiers = [(0, 0), (rows[5]["xid"], rows[5]["position"])]
        compared = pulled = 0
        for mask in masks:
            for frontier in frontiers:
                for limit in (1, 2, 5, 100):
                    general = await conn.fetch(
                        q.consumer_fetch_streams, types, [frontier[0]], [frontier[1]], [mask],
                        [], [], [], limit, "coaching", [], [],
                    )  # fmt: skip
                    plain = await conn.fetch(
                        q.consumer_fetch_range, types, frontier[0], frontier[1], mask, limit,
                        "coaching",
                    )  # fmt: skip
                    assert sorted(map(tuple, plain), key=repr) == sorted(
                        map(tuple, general), key=repr
                    )
                    assert list(plain[0].keys()) == list(general[0].keys())
                    compared += len(general)
                    pulled += sum(r["kind"] == 2 for r in general)
        assert pulled > 0
        assert compared > 3 * len(rows)
