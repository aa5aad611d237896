"""The consumer's invariants under races and crashes (DESIGN.md invariants 2-5).

Each test builds the workload that breaks the naive design: a transaction committing
after a later one, producers taking their transaction id before the subject's lock,
a worker killed with SIGKILL inside its transactions, two workers on one consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event

from .helpers import eventually, example, locked_payload, uid

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("worker_process.py")

# Events at or before a stored cursor that have no outcome: must always be 0.
CURSOR_AHEAD = """
SELECT count(*)
FROM dispatcher_event e
JOIN dispatcher_cursor c ON c.consumer = $1 AND c.event_type = e.event_type
WHERE (e.xid, e.position) <= (c.last_xid, c.last_position)
  AND NOT EXISTS (
      SELECT 1 FROM dispatcher_dedup d WHERE d.consumer = $1 AND d.event_id = e.event_id
  )
"""


@contextlib.asynccontextmanager
async def cursor_monitor(dsn: str, consumer: str) -> AsyncIterator[list[int]]:
    """Check, over and over while the body runs, that the stored cursor never passes an
    event without an outcome; yields the list of violations seen (counts)."""
    conn = await asyncpg.connect(dsn)
    violations: list[int] = []
    checks = 0

    async def watch() -> None:
        nonlocal checks
        while True:
            ahead = await conn.fetchval(CURSOR_AHEAD, consumer)
            checks += 1
            if ahead:
                violations.append(ahead)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(watch())
    try:
        yield violations
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # One last look once everything has settled.
        ahead = await conn.fetchval(CURSOR_AHEAD, consumer)
        if ahead:
            violations.append(ahead)
        await conn.close()
        assert checks > 0


# -- gap race ------------------------------------------------------------------------


class NaiveReader:
    """The classic outbox reader: ``position > last_seen``, then last_seen = max."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.last = 0
        self.seen: set[str] = set()
        self._lock = asyncio.Lock()

    async def poll(self) -> None:
        async with self._lock:
            rows = await self.conn.fetch(
                "SELECT position, event_id FROM dispatcher_event WHERE position > $1 "
                "ORDER BY position",
                self.last,
            )
            for row in rows:
                self.seen.add(row["event_id"])
                self.last = max(self.last, row["position"])


async def test_gap_race_late_commit_is_never_skipped(dispatch_dsn: str) -> None:
    """A commits after B although A inserted first (smaller xid and position): the
    consumer delivers both in every one of 1,000 rounds; a naive reader skips some."""
    rounds, parallel = 1000, 8
    rng = random.Random()
    producers = await asyncpg.create_pool(
        dispatch_dsn, min_size=2 * parallel, max_size=2 * parallel
    )
    consumer_pool = await asyncpg.create_pool(dispatch_dsn, min_size=2, max_size=8)
    naive_conn = await asyncpg.connect(dispatch_dsn)
    dispatcher = Dispatcher(producers, producer="tests", tenant_id="tnt_tests")
    naive = NaiveReader(naive_conn)
    delivered: set[str] = set()
    consumer = Consumer(
        consumer_pool, name="gap", concurrency=4, batch_size=200, poll_interval=0.05
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        delivered.add(event.event_id)

    async def publish(conn: asyncpg.Connection) -> str:
        envelope = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests", conn=conn
        )
        return envelope.event_id

    async def jitter() -> None:
        await asyncio.sleep(rng.uniform(0, 0.002))

    watched_windows = 0

    async def one_round(i: int) -> tuple[str, str, int, int]:
        nonlocal watched_windows
        async with producers.acquire() as a, producers.acquire() as b:
            tx_a = a.transaction()
            await tx_a.start()
            try:
                a_id = await publish(a)  # A: the smaller xid and position
                await jitter()
                async with b.transaction():
                    b_id = await publish(b)
                # B is committed, A is not: the window where a reader skips A.
                if i % 4 == 0:
                    await naive.poll()
                if i % 10 == 0:
                    # Make sure the consumer reads inside the window too (two fetches
                    # completed after B's commit: the second one began after it).
                    seen = consumer.stats.fetches
                    watched_windows += 1
                    await eventually(
                        lambda: consumer.stats.fetches >= seen + 2,
                        within=5,
                        what="a consumer fetch while A is open",
                        every=0.001,
                    )
                await jitter()
            except BaseException:
                await tx_a.rollback()
                raise
            await tx_a.commit()
        positions = await producers.fetch(
            "SELECT event_id, position FROM dispatcher_event WHERE event_id = ANY($1::text[])",
            [a_id, b_id],
        )
        by_id = {r["event_id"]: r["position"] for r in positions}
        return a_id, b_id, by_id[a_id], by_id[b_id]

    try:
        async with consumer:
            queue = iter(range(rounds))
            results: list[tuple[str, str, int, int]] = []

            async def lane() -> None:
                for i in queue:
                    results.append(await one_round(i))

            await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(parallel))), 90)
            await asyncio.wait_for(consumer.wait_idle(), 30)
            await naive.poll()
    finally:
        await naive_conn.close()
        await producers.close()
        await consumer_pool.close()

    assert len(results) == rounds
    assert all(pos_a < pos_b for _, _, pos_a, pos_b in results)
    published = {event_id for a_id, b_id, _, _ in results for event_id in (a_id, b_id)}
    assert len(published) == 2 * rounds
    skipped = published - delivered
    assert not skipped, f"the consumer skipped {len(skipped)} events"
    assert consumer.stats.handled == 2 * rounds
    assert watched_windows == rounds // 10
    # The naive reader read inside the window of every 4th round: it lost A there.
    naive_missed = published - naive.seen
    assert len(naive_missed) >= rounds // 4, "the naive reader should skip late commits"


# -- rolled-back producers -----------------------------------------------------------


async def test_rolled_back_publishes_are_never_delivered(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    delivered: list[str] = []
    consumer = Consumer(dispatch_pool, name="rollback", poll_interval=0.05, concurrency=2)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        delivered.append(event.event_id)

    class Abort(Exception):
        pass

    async def publish(conn: asyncpg.Connection | None = None) -> str:
        envelope = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests", conn=conn
        )
        return envelope.event_id

    committed: set[str] = set()
    rolled_back: set[str] = set()
    async with consumer:
        # A whole transaction rolled back.
        with contextlib.suppress(Abort):
            async with dispatch_pool.acquire() as conn, conn.transaction():
                rolled_back.add(await publish(conn))
                raise Abort

        # ROLLBACK TO SAVEPOINT around a publish, the rest of the transaction commits.
        async with dispatch_pool.acquire() as conn, conn.transaction():
            committed.add(await publish(conn))
            await conn.execute("SAVEPOINT around_publish")
            rolled_back.add(await publish(conn))
            await conn.execute("ROLLBACK TO SAVEPOINT around_publish")
            committed.add(await publish(conn))

        # The same with asyncpg's nested transaction (a savepoint) and publish_many.
        async with dispatch_pool.acquire() as conn, conn.transaction():
            with contextlib.suppress(Abort):
                async with conn.transaction():
                    many = await dispatcher.publish_many(
                        [
                            {
                                "event_type": "credit.locked",
                                "payload": locked_payload(),
                                "subject": uid("per"),
                                "actor": "system:tests",
                            }
                            for _ in range(3)
                        ],
                        conn=conn,
                    )
                    rolled_back.update(e.event_id for e in many)
                    raise Abort
            committed.add(await publish(conn))

        # A transaction left open while later events commit, then rolled back: the
        # consumer waits for it (it holds the horizon), then must not deliver its event.
        async with dispatch_pool.acquire() as held:
            tx = held.transaction()
            await tx.start()
            rolled_back.add(await publish(held))
            later = await publish()
            committed.add(later)
            await tx.rollback()
        committed.add(await publish())

        await asyncio.wait_for(consumer.wait_idle(), 20)

    assert set(delivered) == committed
    assert len(delivered) == len(committed)
    assert not rolled_back & set(delivered)
    in_table = await dispatch_pool.fetchval(
        "SELECT count(*) FROM dispatcher_event WHERE event_id = ANY($1::text[])",
        list(rolled_back),
    )
    assert in_table == 0
    # The positions the rolled-back inserts used are gaps; the cursor went past them.
    cursor = await dispatch_pool.fetchval(
        "SELECT last_position FROM dispatcher_cursor WHERE consumer = 'rollback'"
    )
    assert cursor == await dispatch_pool.fetchval("SELECT max(position) FROM dispatcher_event")


# -- per-subject order ---------------------------------------------------------------


async def test_per_subject_commit_order_with_early_transaction_ids(dispatch_dsn: str) -> None:
    """Producers that take their transaction id, then the subject's lock: events of one
    subject are handled in commit order (position order) across types."""
    types = ("credit.reserved", "credit.locked", "credit.consumed")
    subjects = [uid("crr") for _ in range(100)]
    producers_count, transactions_each = 16, 40
    rng = random.Random()
    pool = await asyncpg.create_pool(dispatch_dsn, min_size=4, max_size=producers_count + 12)
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    await pool.execute("CREATE TABLE producer_write (id bigserial PRIMARY KEY, note text)")
    await pool.execute(
        "CREATE TABLE handled_log (id bigserial PRIMARY KEY, subject text, position bigint)"
    )
    calls: dict[str, list[int]] = defaultdict(list)
    consumer = Consumer(
        pool, name="ordering", concurrency=8, batch_size=8, max_group=4, poll_interval=0.05
    )

    async def handle(event: Event, conn: asyncpg.Connection) -> None:
        calls[event.subject].append(event.position)
        await conn.execute(
            "INSERT INTO handled_log (subject, position) VALUES ($1, $2)",
            event.subject,
            event.position,
        )

    for event_type in types:
        consumer.on(event_type)(handle)

    async def producer() -> None:
        for _ in range(transactions_each):
            subject = rng.choice(subjects)
            async with pool.acquire() as conn, conn.transaction():
                if rng.random() < 0.5:
                    # Take a transaction id now, the subject's lock only later.
                    await conn.execute("INSERT INTO producer_write (note) VALUES ('early')")
                    await asyncio.sleep(rng.uniform(0, 0.003))
                for _ in range(rng.randint(1, 2)):
                    event_type = rng.choice(types)
                    await dispatcher.publish(
                        event_type,
                        example(event_type),
                        subject=subject,
                        actor="system:tests",
                        conn=conn,
                    )
                await asyncio.sleep(rng.uniform(0, 0.002))

    try:
        async with cursor_monitor(dispatch_dsn, "ordering") as violations, consumer:
            await asyncio.wait_for(
                asyncio.gather(*(producer() for _ in range(producers_count))), 60
            )
            await asyncio.wait_for(consumer.wait_idle(), 30)
        events = await pool.fetch(
            "SELECT subject, position, xid::text::bigint AS xid FROM dispatcher_event"
        )
        log = await pool.fetch("SELECT subject, position FROM handled_log ORDER BY id")
    finally:
        await pool.close()

    by_subject: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in events:
        by_subject[row["subject"]].append((row["position"], row["xid"]))
    committed_log: dict[str, list[int]] = defaultdict(list)
    for row in log:
        committed_log[row["subject"]].append(row["position"])

    inversions = 0
    for subject, rows in by_subject.items():
        commit_order = [position for position, _ in sorted(rows)]
        assert committed_log[subject] == commit_order, f"subject {subject} out of order"
        assert calls[subject] == commit_order, f"subject {subject} handled out of order"
        xids = [xid for _, xid in sorted(rows)]
        inversions += sum(1 for x, y in itertools.pairwise(xids) if x > y)
    assert len(events) == sum(len(v) for v in committed_log.values())
    assert len(by_subject) > 90
    # The workload did produce transaction-id order different from commit order.
    assert inversions > 0
    assert violations == []


# -- worker processes ----------------------------------------------------------------


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


DEDUP_COUNT = "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'effects'"

# The lease of the worker processes that get killed: a restarted worker takes their
# partitions over only once it has run out, so the default (10 s) would be most of the
# tests' time. Short, yet the length the group tests run with on a loaded machine.
KILLED_LEASE = ("--lease-timeout", "3")


class Worker:
    """A ``worker_process.py`` subprocess."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, dsn: str, log: Path, *args: str) -> Worker:
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                dsn,
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        worker = cls(proc, log)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
        except BaseException:
            await worker.kill()
            raise
        assert line.strip() == b"ready", f"worker failed to start: {tail(log)}"
        return worker

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 10)

    async def terminate(self) -> dict[str, int]:
        """SIGTERM: drain and exit 0; returns the stats the worker printed."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.read(), 20)
        code = await asyncio.wait_for(self.proc.wait(), 10)
        assert code == 0, f"worker exited {code}: {tail(self.log)}"
        stats: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
        return stats


async def test_kill_9_mid_batch_loses_and_duplicates_nothing(
    dispatch_dsn: str, tmp_path: Path
) -> None:
    pool = await asyncpg.create_pool(dispatch_dsn, min_size=2, max_size=6)
    await pool.execute("CREATE TABLE effects (event_id text PRIMARY KEY)")
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    rng = random.Random()
    published: list[str] = []
    producing = asyncio.Event()
    producing.set()
    log = tmp_path / "worker.log"

    async def count(sql: str) -> int:
        return int(await pool.fetchval(sql))

    async def producer() -> None:
        subjects = [uid("per") for _ in range(20)]
        while producing.is_set() and len(published) < 2500:
            async with pool.acquire() as conn, conn.transaction():
                for _ in range(rng.randint(1, 5)):
                    envelope = await dispatcher.publish(
                        "credit.locked",
                        locked_payload(),
                        subject=rng.choice(subjects),
                        actor="system:tests",
                        conn=conn,
                    )
                    published.append(envelope.event_id)
            await asyncio.sleep(rng.uniform(0, 0.01))

    kills = kills_mid_transaction = 0
    try:
        async with cursor_monitor(dispatch_dsn, "effects") as violations:
            producing_task = asyncio.create_task(producer())
            try:
                for _ in range(5):
                    before = await count("SELECT count(*) FROM effects")
                    worker = await Worker.start(
                        dispatch_dsn, log, "--max-sleep-ms", "4", *KILLED_LEASE
                    )
                    try:
                        # Let it commit some groups, then kill it at a random moment.
                        await eventually(
                            lambda b=before: _more(pool, b + 10),
                            within=20,
                            what="the worker to handle events",
                        )
                        await asyncio.sleep(rng.uniform(0, 0.15))
                        # A handler's insert inside a transaction still open: mid-batch.
                        open_tx = await count(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND xact_start IS NOT NULL "
                            "AND query LIKE 'INSERT INTO effects%'"
                        )
                    finally:
                        await worker.kill()
                    kills += 1
                    kills_mid_transaction += open_tx > 0
            finally:
                producing.clear()
                await asyncio.wait_for(producing_task, 20)

            total = len(published)
            worker = await Worker.start(dispatch_dsn, log, *KILLED_LEASE)
            try:
                await eventually(
                    lambda: _count_is(
                        pool,
                        "SELECT count(*) FROM dispatcher_dedup WHERE consumer='effects'",
                        total,
                    ),
                    within=30,
                    what="the last worker to catch up",
                )
            finally:
                await worker.terminate()

        rows = await count("SELECT count(*) FROM effects")
        distinct = await count("SELECT count(DISTINCT event_id) FROM effects")
        effect_ids = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM effects")}
        dedup = await count(DEDUP_COUNT)
    finally:
        await pool.close()
    assert kills == 5
    assert kills_mid_transaction >= 1
    assert total > 50
    assert rows == distinct == total == dedup
    assert effect_ids == set(published)
    assert violations == []


async def _more(pool: asyncpg.Pool, at_least: int) -> bool:
    return int(await pool.fetchval("SELECT count(*) FROM effects")) >= at_least


async def _count_is(pool: asyncpg.Pool, sql: str, expected: int) -> bool:
    return int(await pool.fetchval(sql)) == expected


async def test_two_worker_processes_handle_each_event_once(
    dispatch_dsn: str, tmp_path: Path
) -> None:
    pool = await asyncpg.create_pool(dispatch_dsn, min_size=2, max_size=6)
    # No unique constraint: a duplicate handler write would show as a second row.
    await pool.execute("CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL)")
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    total = 600
    published: list[str] = []
    try:
        workers = await asyncio.gather(
            Worker.start(dispatch_dsn, tmp_path / "a.log", "--max-sleep-ms", "2"),
            Worker.start(dispatch_dsn, tmp_path / "b.log", "--max-sleep-ms", "2"),
        )
        stats: list[dict[str, int]] = []
        try:
            # Both are idle and listening, each with its share of the partitions.
            subjects = [uid("per") for _ in range(50)]
            for i in range(0, total, 20):
                envelopes = await dispatcher.publish_many(
                    [
                        {
                            "event_type": "credit.locked",
                            "payload": locked_payload(),
                            "subject": subjects[(i + j) % len(subjects)],
                            "actor": "system:tests",
                        }
                        for j in range(20)
                    ]
                )
                published.extend(e.event_id for e in envelopes)
            await eventually(
                lambda: _count_is(pool, DEDUP_COUNT, total),
                within=30,
                what="both workers to finish",
            )
        finally:
            for worker in workers:
                if worker.proc.returncode is None:
                    stats.append(await worker.terminate())
        duplicated = await pool.fetch(
            "SELECT event_id, count(*) FROM effects GROUP BY event_id HAVING count(*) > 1"
        )
        handled = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM effects")}
        rows = await pool.fetchval("SELECT count(*) FROM effects")
    finally:
        await pool.close()
    assert duplicated == []
    assert rows == total
    assert handled == set(published)
    assert sum(s["handled"] for s in stats) == total
    assert len(stats) == 2
    # They split the partitions (ADR 0006): each handled its share, none read them all.
    assert all(0 < s["handled"] < total for s in stats)
