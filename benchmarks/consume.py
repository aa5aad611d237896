"""Consumer benchmarks: dispatch-aio against PgQueuer, measured in the same run.

    python benchmarks/consume.py            # full run (a few minutes)
    python benchmarks/consume.py --quick    # small sizes: a smoke run, figures meaningless

(a) drain a backlog with a no-op handler: dispatch-aio events/s vs PgQueuer jobs/s
    (``QueueManager.run(batch_size=100)``, its other defaults);
(b) the same with a handler inserting one row: dispatch-aio through the event's
    connection (commits with the event's outcome), PgQueuer through a pool connection;
    beside them, raw asyncpg doing the same writes with nothing read, decoded or checked
    (what PostgreSQL and the driver allow for those writes: the consumer's own cost is
    the distance to it);
(c) end-to-end latency, producer commit to handler start, at a steady rate;
(d) dispatch-aio's drain of the same backlog behind a long history (events its cursor
    has passed) versus on a table holding only the backlog. The two run one after the
    other in every round, so each round gives a ratio of its own; the goal takes the
    median of those (one fast round of either drain alone does not make it).

Every drain also reports what it cost per event, measured the same way for both systems
outside the timed window: CPU of this process and of the server's processes, WAL bytes,
write transactions. On a small machine the two compete for the same cores, so those say
why one round was slower than another better than the rates can.

Both systems get one database each on one embedded PostgreSQL with fsync on, an
asyncpg pool of the same size, the standard asyncio event loop, settled tables
(VACUUM ANALYZE + CHECKPOINT before measuring) and no garbage of earlier drains left
for the drain to collect (``gc.collect()`` before the timed window). Drains run
``--rounds`` times, the order flipped every round; the best round of each counts (all
are printed), except for (d), whose ratio is the median of the rounds' own. A drain
counts from starting the consumer to the last event done: for dispatch-aio, its outcome
committed; for PgQueuer, its handler returned (its status write is buffered and comes
later, so this favours PgQueuer slightly).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from typing import Any

import _common as common
import asyncpg

from dispatch_aio import Consumer, ConsumerConfig, Event, Telemetry

try:
    from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Queries, QueueManager
except ImportError:  # pragma: no cover - a benchmark-only dependency
    sys.exit("PgQueuer is needed for the comparison: pip install 'dispatch-aio[bench]'")

EVENT_TYPE = "credit.locked"
CONSUMER = "bench"
ENTRYPOINT = "bench"
HISTORY_TYPES = (("credit.locked", 0.6), ("credit.reserved", 0.2), ("credit.released", 0.2))
PROJECTION_DDL = "CREATE TABLE projection (id bigserial PRIMARY KEY, event_id text NOT NULL)"
DRAIN_TIMEOUT = 300.0  # seconds: a drain slower than this is broken, not slow
INSERT_PROJECTION = "INSERT INTO projection (event_id) VALUES ($1)"

_DEFAULTS = ConsumerConfig(name="defaults")

HEADINGS = (
    "== settings ==",
    "== (a) backlog drain, no-op handler ==",
    "== (b) backlog drain, handler inserting one row ==",
    "== (c) end-to-end latency ==",
    "== (d) drain behind a long history ==",
    "== instrumentation overhead ==",
    "== cost per event ==",
    "== goals ==",
)


@dataclass(frozen=True)
class Settings:
    backlog: int
    subjects: int
    history: int
    rate: int
    duration: float
    rounds: int
    latency_rounds: int
    quick: bool = False
    pool_size: int = 20
    #: Only drains (a) and (b): no long history to load, no latency rounds.
    drains_only: bool = False


FULL = Settings(
    backlog=20_000,
    subjects=4_000,
    history=1_000_000,
    rate=100,
    duration=10,
    rounds=3,
    latency_rounds=2,
)
QUICK = Settings(
    backlog=1_000,
    subjects=200,
    history=20_000,
    rate=100,
    duration=2,
    rounds=1,
    latency_rounds=1,
    quick=True,
)


@dataclass
class Results:
    drains: dict[str, list[float]] = field(default_factory=dict)  # label -> events/s per round
    latency: dict[str, list[float]] = field(default_factory=dict)  # label -> ms samples
    costs: dict[str, list[Cost]] = field(default_factory=dict)  # label -> one per round

    def add(self, label: str, rate: float, cost: Cost | None = None) -> None:
        self.drains.setdefault(label, []).append(rate)
        if cost is not None:
            self.costs.setdefault(label, []).append(cost)

    def best(self, label: str) -> float:
        return max(self.drains[label])


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Cost:
    """What one drain cost per event (us of CPU, bytes of WAL, write transactions)."""

    client_us: float
    server_us: float | None
    wal_bytes: float
    transactions: float


def _run_time_ns(pid: int) -> int | None:
    """A process's CPU time so far: the scheduler's exact figure (Linux), else None.

    Not utime/stime: those are sampled at clock ticks and miss most of a backend's short
    bursts of work.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CostMeter:
    """Measures one drain's cost per event, the same way for both systems, outside the
    timed window: this process's CPU; the CPU of every server process (the server is
    local; Linux only); the cluster's WAL bytes and write transactions (transaction ids
    taken: each is a commit that waits for the disk, or a rollback). Drains run one at
    a time, so those are the drain's own."""

    def __init__(self) -> None:
        self._client = 0.0
        self._server: dict[int, int] = {}
        self._wal = 0
        self._transactions = 0
        #: The last drain's cost, once stopped.
        self.cost: Cost | None = None

    async def _server_state(self, pool: asyncpg.Pool) -> tuple[dict[int, int], int, int]:
        # WAL position and the next transaction id, not the cumulative statistics views:
        # a busy backend publishes those up to seconds later.
        row = await pool.fetchrow(
            "SELECT (SELECT array_agg(pid) FROM pg_stat_activity) AS pids,"
            " pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint AS wal,"
            " pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xacts"
        )
        times = {pid: _run_time_ns(pid) for pid in row["pids"] or ()}
        return {p: t for p, t in times.items() if t is not None}, row["wal"], row["xacts"]

    async def start(self, pool: asyncpg.Pool) -> None:
        self._server, self._wal, self._transactions = await self._server_state(pool)
        self._client = time.process_time()

    async def stop(self, pool: asyncpg.Pool, events: int) -> Cost:
        client = time.process_time() - self._client
        server, wal, transactions = await self._server_state(pool)
        # Processes started during the drain (a LISTEN connection) count from zero.
        used = sum(t - self._server.get(pid, 0) for pid, t in server.items())
        self.cost = Cost(
            client_us=client / events * 1e6,
            server_us=used / events / 1e3 if server else None,
            wal_bytes=(wal - self._wal) / events,
            transactions=(transactions - self._transactions) / events,
        )
        return self.cost


def collect_garbage() -> None:
    """Collect what earlier drains and this one's setup left, before the timed window.

    Every system runs in this process, one drain after another: without this, one
    drain's garbage (a consumer's registry, a read's rows) is collected in the middle of
    whichever drain comes next, and that drain pays for it. The Python counterpart of
    settling the tables before each measurement.
    """
    gc.collect()


# -- dispatch-aio --------------------------------------------------------------------------


async def reset_dispatch(pool: asyncpg.Pool, cursor_at: tuple[int, int]) -> None:
    """Forget the measured consumer's outcomes and put its cursor back at ``cursor_at``."""
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE dispatcher_dedup, projection")
        await common.set_cursor(conn, CONSUMER, [EVENT_TYPE], cursor_at)
    await common.settle(pool, "dispatcher_cursor")


async def dispatch_drain(
    pool: asyncpg.Pool,
    cursor_at: tuple[int, int],
    expected: int,
    *,
    write: bool,
    meter: CostMeter | None = None,
) -> float:
    """Drain ``expected`` events past ``cursor_at``; returns events per second."""
    await reset_dispatch(pool, cursor_at)
    consumer = Consumer(pool, name=CONSUMER)
    if write:

        @consumer.on(EVENT_TYPE)
        async def write_one(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute(INSERT_PROJECTION, event.event_id)

    else:

        @consumer.on(EVENT_TYPE)
        async def no_op(event: Event) -> None:
            return None

    collect_garbage()
    if meter is not None:
        await meter.start(pool)
    start = time.perf_counter()
    async with consumer:
        end = await common.wait_until(
            lambda: consumer.stats.handled >= expected, within=DRAIN_TIMEOUT
        )
        if meter is not None:
            await meter.stop(pool, expected)
    marked = await pool.fetchval(
        "SELECT count(*) FROM dispatcher_dedup WHERE consumer = $1", CONSUMER
    )
    written = await pool.fetchval("SELECT count(*) FROM projection")
    if consumer.stats.handled != expected or marked != expected:
        raise AssertionError(f"dispatch-aio handled {consumer.stats.handled}, marked {marked}")
    if write and written != expected:
        raise AssertionError(f"dispatch-aio wrote {written} rows for {expected} events")
    return expected / (end - start)


# -- raw asyncpg: the same writes -----------------------------------------------------------

RAW_CONSUMER = "bench-raw"
RAW_GROUP = 100  # events per transaction: about the consumer's groups in these drains
RAW_MARKERS = (
    "INSERT INTO dispatcher_dedup (consumer, event_id, outcome)"
    " SELECT $1, unnest($2::text[]), 'handled' ON CONFLICT (consumer, event_id) DO NOTHING"
)


async def backlog_ids(pool: asyncpg.Pool) -> list[str]:
    """The backlog's event ids in the order a consumer reads them."""
    rows = await pool.fetch(
        "SELECT event_id FROM dispatcher_event WHERE event_type = $1 ORDER BY xid, position",
        EVENT_TYPE,
    )
    return [row["event_id"] for row in rows]


async def raw_drain(
    pool: asyncpg.Pool, event_ids: list[str], *, meter: CostMeter | None = None
) -> float:
    """What (b) writes, by raw asyncpg; returns events per second.

    As many tasks as the consumer runs groups, each taking ``RAW_GROUP`` events at a
    time: in one transaction, one ``INSERT`` per event on that connection (the handler's
    row), then the group's markers in one statement, then ``COMMIT``. No row is read,
    no payload parsed or checked, nothing scheduled, no lease fenced: the floor under
    drain (b) on this machine.
    """
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE dispatcher_dedup, projection")
    await common.settle(pool, "dispatcher_dedup", "projection")
    groups = iter([event_ids[i : i + RAW_GROUP] for i in range(0, len(event_ids), RAW_GROUP)])

    async def worker() -> None:
        async with pool.acquire() as conn:
            for group in groups:
                async with conn.transaction():
                    for event_id in group:
                        await conn.execute(INSERT_PROJECTION, event_id)
                    await conn.execute(RAW_MARKERS, RAW_CONSUMER, group)

    collect_garbage()
    if meter is not None:
        await meter.start(pool)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(_DEFAULTS.concurrency)))
    end = time.perf_counter()
    if meter is not None:
        await meter.stop(pool, len(event_ids))
    marked = await pool.fetchval(
        "SELECT count(*) FROM dispatcher_dedup WHERE consumer = $1", RAW_CONSUMER
    )
    written = await pool.fetchval("SELECT count(*) FROM projection")
    if marked != len(event_ids) or written != len(event_ids):
        raise AssertionError(f"raw asyncpg marked {marked} and wrote {written} rows")
    return len(event_ids) / (end - start)


# -- PgQueuer ------------------------------------------------------------------------------


async def pgq_fill(pool: asyncpg.Pool, payloads: list[bytes | None]) -> None:
    """Empty PgQueuer's tables, enqueue one job per payload, settle the queue table."""
    await pool.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics, projection")
    queries = Queries(AsyncpgPoolDriver(pool))
    for start in range(0, len(payloads), 5_000):
        part = payloads[start : start + 5_000]
        await queries.enqueue([ENTRYPOINT] * len(part), part, [0] * len(part))
    await common.settle(pool, "pgqueuer")


async def pgq_drain(
    pool: asyncpg.Pool,
    payloads: list[bytes | None],
    *,
    write: bool,
    meter: CostMeter | None = None,
) -> float:
    """PgQueuer drains one job per payload with ``batch_size=100``; returns jobs per second."""
    await pgq_fill(pool, payloads)
    expected = len(payloads)
    qm = QueueManager(Queries(AsyncpgPoolDriver(pool)))
    handled = 0

    if write:

        @qm.entrypoint(ENTRYPOINT)
        async def write_one(job: Any) -> None:
            nonlocal handled
            async with pool.acquire() as conn:
                await conn.execute(INSERT_PROJECTION, str(job.id))
            handled += 1

    else:

        @qm.entrypoint(ENTRYPOINT)
        async def no_op(job: Any) -> None:
            nonlocal handled
            handled += 1

    collect_garbage()
    if meter is not None:
        await meter.start(pool)
    start = time.perf_counter()
    runner = asyncio.create_task(qm.run(batch_size=100))
    try:
        end = await common.wait_until(lambda: handled >= expected, within=DRAIN_TIMEOUT)
        if meter is not None:
            await meter.stop(pool, expected)
    finally:
        qm.shutdown.set()
        await runner
    left = await pool.fetchval("SELECT count(*) FROM pgqueuer")
    written = await pool.fetchval("SELECT count(*) FROM projection")
    if handled != expected or left != 0:
        raise AssertionError(f"PgQueuer handled {handled} of {expected}, {left} left queued")
    if write and written != expected:
        raise AssertionError(f"PgQueuer wrote {written} rows for {expected} jobs")
    return expected / (end - start)


# -- latency -------------------------------------------------------------------------------


async def paced(
    count: int, rate: int, produce: Callable[[], Awaitable[tuple[Any, float]]]
) -> dict[Any, float]:
    """Call ``produce`` ``count`` times at ``rate`` per second; key -> commit time."""
    sent: dict[Any, float] = {}
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        key, committed = await produce()
        sent[key] = committed
    return sent


def latencies_ms(sent: dict[Any, float], started: dict[Any, float]) -> list[float]:
    missing = set(sent) - set(started)
    if missing:
        raise AssertionError(f"{len(missing)} of {len(sent)} never reached a handler")
    return [(started[k] - sent[k]) * 1000.0 for k in sent]


async def dispatch_latency(dsn: str, settings: Settings, payload: dict[str, Any]) -> list[float]:
    pool = await common.open_pool(dsn, settings.pool_size)
    producer_conn = await asyncpg.connect(dsn)
    publisher = common.dispatcher(None)
    subject_ids = common.subjects(50)
    started: dict[str, float] = {}
    consumer = Consumer(pool, name="latency")

    @consumer.on(EVENT_TYPE)
    async def on_event(event: Event) -> None:
        started.setdefault(event.event_id, time.perf_counter())

    counter = 0

    async def produce() -> tuple[str, float]:
        nonlocal counter
        counter += 1
        transaction = producer_conn.transaction()
        await transaction.start()
        envelope = await publisher.publish(
            EVENT_TYPE,
            payload,
            subject=subject_ids[counter % len(subject_ids)],
            actor=common.ACTOR,
            conn=producer_conn,
        )
        committing = time.perf_counter()
        await transaction.commit()
        return envelope.event_id, committing

    try:
        await common.settle(pool)
        async with consumer:
            await consumer.wait_idle()
            sent = await paced(int(settings.rate * settings.duration), settings.rate, produce)
            await common.wait_until(lambda: set(sent) <= set(started), within=30, interval=0.01)
    finally:
        await producer_conn.close()
        await pool.close()
    return latencies_ms(sent, started)


async def pgq_latency(dsn: str, settings: Settings, payload: bytes) -> list[float]:
    pool = await common.open_pool(dsn, settings.pool_size + 1)
    producer_conn = await asyncpg.connect(dsn)
    producer = Queries(AsyncpgDriver(producer_conn))
    qm = QueueManager(Queries(AsyncpgPoolDriver(pool)))
    started: dict[int, float] = {}

    @qm.entrypoint("latency")
    async def on_job(job: Any) -> None:
        started.setdefault(int(job.id), time.perf_counter())

    async def produce() -> tuple[int, float]:
        transaction = producer_conn.transaction()
        await transaction.start()
        (job_id,) = await producer.enqueue("latency", payload)
        committing = time.perf_counter()
        await transaction.commit()
        return int(job_id), committing

    await pool.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")
    await common.settle(pool, "pgqueuer")
    runner = asyncio.create_task(qm.run())  # its defaults
    try:
        await asyncio.sleep(0.5)  # let it start listening
        sent = await paced(int(settings.rate * settings.duration), settings.rate, produce)
        await common.wait_until(lambda: set(sent) <= set(started), within=60, interval=0.01)
    finally:
        qm.shutdown.set()
        await runner
        await producer_conn.close()
        await pool.close()
    return latencies_ms(sent, started)


# -- the run -------------------------------------------------------------------------------


async def prepare(
    server: common.BenchServer, settings: Settings
) -> tuple[str, str, str, str, tuple[int, int], list[bytes | None], dict[str, Any]]:
    factory = common.PayloadFactory()
    hot = common.subjects(settings.subjects)
    specs = common.backlog_specs(settings.backlog, hot, EVENT_TYPE, factory, seed=1)
    payload_bytes: list[bytes | None] = [
        json.dumps(s["payload"], separators=(",", ":")).encode() for s in specs
    ]

    small = await server.create_database("bench_small")
    big = await server.create_database("bench_big")
    pgq = await server.create_database("bench_pgqueuer", dispatch_schema=False)
    latency = await server.create_database("bench_latency")

    for dsn in (small, big, pgq):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(PROJECTION_DDL)
        finally:
            await conn.close()

    conn = await asyncpg.connect(pgq)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()

    passed = (0, 0)
    if not settings.drains_only:  # --drains-only: no long history, so no drain (d)
        started = time.perf_counter()
        pool = await common.open_pool(big, 4)
        try:
            await common.copy_history(
                pool,
                settings.history,
                types=HISTORY_TYPES,
                hot_subjects=hot,
                factory=factory,
                progress=lambda n: log(f"history: {n:,} events") if n % 200_000 == 0 else None,
            )
            async with pool.acquire() as conn:
                passed = await common.set_cursor_past_everything(conn, CONSUMER, [EVENT_TYPE])
            await common.publish_backlog(pool, specs)
        finally:
            await pool.close()
        log(f"history of {settings.history:,} loaded in {time.perf_counter() - started:.1f}s")

    pool = await common.open_pool(small, 4)
    try:
        await common.publish_backlog(pool, specs)
    finally:
        await pool.close()

    await common.settle(small, "dispatcher_event")
    if not settings.drains_only:
        await common.settle(big, "dispatcher_event")
    return small, big, pgq, latency, passed, payload_bytes, specs[0]["payload"]


async def run(settings: Settings) -> int:
    loop = type(asyncio.get_running_loop())
    if "uvloop" in f"{type(asyncio.get_event_loop_policy()).__module__}{loop.__module__}":
        raise SystemExit("these figures are for the standard asyncio event loop")
    server = common.BenchServer.start()
    try:
        run_started = time.perf_counter()
        version = await server.server_version()
        small, big, pgq, latency, passed, payloads, one_payload = await prepare(server, settings)
        print_settings(settings, version, loop)
        results = Results()
        await measure_drains(settings, results, small, big, pgq, passed, payloads)
        if settings.drains_only:
            report_drains(results)
            return 0
        for r in range(settings.latency_rounds):
            log(f"latency round {r + 1}: dispatch-aio")
            sample = await dispatch_latency(latency, settings, one_payload)
            results.latency.setdefault("da", []).extend(sample)
            log(f"latency round {r + 1}: PgQueuer")
            sample = await pgq_latency(pgq, settings, json.dumps(one_payload).encode())
            results.latency.setdefault("pgq", []).extend(sample)
        report(results, settings)
        print(f"  total run time {time.perf_counter() - run_started:.0f}s")
    finally:
        server.stop()
    return 0


async def measure_drains(
    settings: Settings,
    results: Results,
    small: str,
    big: str,
    pgq: str,
    passed: tuple[int, int],
    payloads: list[bytes | None],
) -> None:
    """Every drain, ``rounds`` times; the order within a round flips from round to round."""
    n = settings.backlog
    small_pool = await common.open_pool(small, settings.pool_size)
    big_pool = await common.open_pool(big, settings.pool_size)
    pgq_pool = await common.open_pool(pgq, settings.pool_size + 1)
    try:
        ids = await backlog_ids(small_pool)
        meter = CostMeter()
        steps: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("pgq noop", lambda: pgq_drain(pgq_pool, payloads, write=False, meter=meter)),
            ("da noop", lambda: dispatch_drain(small_pool, (0, 0), n, write=False, meter=meter)),
            ("da noop big", lambda: dispatch_drain(big_pool, passed, n, write=False, meter=meter)),
            ("pgq write", lambda: pgq_drain(pgq_pool, payloads, write=True, meter=meter)),
            ("da write", lambda: dispatch_drain(small_pool, (0, 0), n, write=True, meter=meter)),
            ("raw write", lambda: raw_drain(small_pool, ids, meter=meter)),
        ]
        if settings.drains_only:
            steps = [step for step in steps if step[0] != "da noop big"]
        for r in range(settings.rounds):
            log(f"drain round {r + 1} of {settings.rounds}")
            # Every other round runs backwards, so that no drain always follows the same one.
            for label, drain in steps if r % 2 == 0 else reversed(steps):
                meter.cost = None
                rate = await drain()
                results.add(label, rate, meter.cost)
    finally:
        await small_pool.close()
        await big_pool.close()
        await pgq_pool.close()


def print_settings(settings: Settings, version: str, loop: type) -> None:
    print(HEADINGS[0])
    lines = (
        f"{common.machine_summary()}, event loop {loop.__module__}.{loop.__name__}",
        f"PostgreSQL {version}, embedded, fsync=on, synchronous_commit=on, autovacuum off "
        "(VACUUM ANALYZE + CHECKPOINT before each measurement)",
        f"PgQueuer {package_version('pgqueuer')}: durable tables, AsyncpgPoolDriver; "
        "QueueManager.run(batch_size=100) for drains, run() defaults for latency",
        f"dispatch-aio: Consumer defaults (concurrency {_DEFAULTS.concurrency}, batch_size "
        f"{_DEFAULTS.batch_size}, max_group {_DEFAULTS.max_group}, poll_interval "
        f"{_DEFAULTS.poll_interval:g} s)",
        f"pools: {settings.pool_size} connections each; PgQueuer's has one more, which its "
        "LISTEN takes (dispatch-aio's LISTEN connection is outside its pool)",
        f"backlog: {settings.backlog:,} events of {EVENT_TYPE} over {settings.subjects:,} "
        f"subjects; history (d): {settings.history:,} older events the cursor has passed",
        f"drains: best of {settings.rounds} round(s), order flipped every round; latency: "
        f"{settings.latency_rounds} round(s) of {settings.rate}/s for {settings.duration:g} s, "
        "samples pooled",
    )
    for line in lines:
        print(f"  {line}")
    sys.stdout.flush()


def _rounds(values: list[float]) -> str:
    return "rounds: " + ", ".join(f"{v:,.0f}" for v in values)


def instrumentation_cost_us(calls: int = 20_000) -> float:
    """CPU time of what the consumer reports per handled event, OpenTelemetry API only.

    Measured on its own: a throughput A/B of a few percent drowns in the disk's noise.
    """
    telemetry = Telemetry.default()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            # What Consumer._call does around a handler: a span only when tracing is on.
            if telemetry.tracing_enabled():
                with telemetry.consume_span(
                    event_type="credit.locked",
                    event_id="evt_x",
                    consumer="bench",
                    attempt=1,
                    traceparent=None,
                ):
                    pass
            telemetry.observe_latency("credit.locked", "bench", 1.0, 0.1)
            telemetry.consumed("credit.locked", "bench", "bench", "handled")
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def report(results: Results, settings: Settings) -> None:
    drains, best = results.drains, results.best
    da_noop, pgq_noop = best("da noop"), best("pgq noop")
    da_write, pgq_write = best("da write"), best("pgq write")
    big = best("da noop big")
    ratio_a = da_noop / pgq_noop
    ratio_b = da_write / pgq_noop
    # Paired by round: both drains ran back to back, on the machine as it was then.
    paired = [b / a for a, b in zip(drains["da noop"], drains["da noop big"], strict=True)]
    ratio_d = statistics.median(paired)
    width = 48

    def row(label: str, value: str, rounds: str = "") -> None:
        print(f"  {label:<{width}} {value:>10}   {rounds}".rstrip())

    print(HEADINGS[1])
    row("dispatch-aio (events/s)", f"{da_noop:,.0f}", _rounds(drains["da noop"]))
    row("PgQueuer, batch_size=100 (jobs/s)", f"{pgq_noop:,.0f}", _rounds(drains["pgq noop"]))
    row("ratio dispatch-aio / PgQueuer", f"{ratio_a:.2f}x")

    print(HEADINGS[2])
    row(
        "dispatch-aio, via the event's conn (events/s)",
        f"{da_write:,.0f}",
        _rounds(drains["da write"]),
    )
    row("PgQueuer, via a pool conn (jobs/s)", f"{pgq_write:,.0f}", _rounds(drains["pgq write"]))
    row("ratio dispatch-aio / PgQueuer, both writing", f"{da_write / pgq_write:.2f}x")
    row("ratio dispatch-aio writing / PgQueuer no-op", f"{ratio_b:.2f}x")
    row(
        "raw asyncpg, the same writes only (events/s)",
        f"{best('raw write'):,.0f}",
        _rounds(drains["raw write"]),
    )
    row("ratio dispatch-aio writing / raw asyncpg", f"{da_write / best('raw write'):.2f}x")

    print(HEADINGS[3])
    count = int(settings.rate * settings.duration) * settings.latency_rounds
    print(
        f"  {count} events at {settings.rate}/s; ms from the producer sending COMMIT "
        "to the handler starting"
    )
    print(f"  {'':<{width - 22}} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}")
    p50: dict[str, float] = {}
    p99: dict[str, float] = {}
    for key, label in (("da", "dispatch-aio"), ("pgq", "PgQueuer (defaults)")):
        sample = results.latency[key]
        p50[key] = common.percentile(sample, 50)
        p99[key] = common.percentile(sample, 99)
        figures = (p50[key], common.percentile(sample, 95), p99[key])
        cells = " ".join(f"{v:>9.2f}" for v in (*figures, max(sample)))
        print(f"  {label:<{width - 22}} {cells}")

    print(HEADINGS[4])
    table = settings.history + settings.backlog
    row(
        f"dispatch-aio, table of {settings.backlog:,} (events/s)",
        f"{da_noop:,.0f}",
        _rounds(drains["da noop"]),
    )
    row(
        f"dispatch-aio, table of {table:,} (events/s)",
        f"{big:,.0f}",
        _rounds(drains["da noop big"]),
    )
    row("ratio of the best rounds", f"{big / da_noop:.2f}")
    row(
        "ratio within each round, median",
        f"{ratio_d:.2f}",
        "rounds: " + ", ".join(f"{v:.2f}" for v in paired),
    )

    print(HEADINGS[5])
    telemetry_us = instrumentation_cost_us()
    per_event_us = 1e6 / da_noop
    overhead = telemetry_us / per_event_us * 100
    row("OpenTelemetry API, no SDK: us per handled event", f"{telemetry_us:.2f}")
    row("per-event time of the no-op drain (a), us", f"{per_event_us:.1f}")
    row("instrumentation overhead", f"{overhead:.2f}%")

    print(HEADINGS[6])
    print(
        "  per event, every round in order: CPU of this process (both consumers run in it), "
        "CPU of the server's processes, WAL bytes, write transactions"
    )
    for label, title in (
        ("pgq noop", "PgQueuer, no-op"),
        ("da noop", "dispatch-aio, no-op"),
        ("da noop big", "dispatch-aio, no-op, long history"),
        ("pgq write", "PgQueuer, writing"),
        ("da write", "dispatch-aio, writing"),
        ("raw write", "raw asyncpg, the same writes"),
    ):
        costs = results.costs.get(label, [])
        if not costs:
            continue
        client = "/".join(f"{c.client_us:.0f}" for c in costs)
        server = "/".join("-" if c.server_us is None else f"{c.server_us:.0f}" for c in costs)
        wal = "/".join(f"{c.wal_bytes:.0f}" for c in costs)
        xacts = "/".join(f"{c.transactions:.3f}" for c in costs)
        print(f"  {title:<34} client {client} us, server {server} us, WAL {wal} B, xacts {xacts}")

    print(HEADINGS[7])
    goals = (
        (
            "(a) >= 2.0x PgQueuer's drain in the same run, on the standard asyncio loop",
            ratio_a >= 2.0,
            f"{ratio_a:.2f}x",
        ),
        ("(b) >= 1.2x PgQueuer's no-op drain", ratio_b >= 1.2, f"{ratio_b:.2f}x"),
        (
            "(c) p50 and p99 <= PgQueuer's in the same run",
            p50["da"] <= p50["pgq"] and p99["da"] <= p99["pgq"],
            f"p50 {p50['da']:.2f} vs {p50['pgq']:.2f} ms, "
            f"p99 {p99['da']:.2f} vs {p99['pgq']:.2f} ms",
        ),
        ("(d) ratio >= 0.9 (median of the rounds' own)", ratio_d >= 0.9, f"{ratio_d:.2f}"),
        (
            "instrumentation with a no-op provider < 5% of the drain's time per event",
            overhead < 5,
            f"{overhead:.2f}%",
        ),
    )
    for text, ok, value in goals:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}: {value}")
    if settings.quick:
        print("  (--quick: sizes too small for these figures to mean anything)")


def report_drains(results: Results) -> None:
    """The ``--drains-only`` report: drains (a) and (b), their ratios and costs."""
    best = results.best
    for label in ("pgq noop", "da noop", "pgq write", "da write", "raw write"):
        costs = results.costs.get(label, [])
        client = "/".join(f"{c.client_us:.0f}" for c in costs)
        server = "/".join("-" if c.server_us is None else f"{c.server_us:.0f}" for c in costs)
        print(
            f"  {label:<10} best {best(label):>8,.0f}/s   {_rounds(results.drains[label])}"
            f"   client {client} us, server {server} us per event"
        )
    pgq = best("pgq noop")
    print(f"  (a) dispatch-aio no-op / PgQueuer no-op: {best('da noop') / pgq:.2f}x")
    print(f"  (b) dispatch-aio writing / PgQueuer no-op: {best('da write') / pgq:.2f}x")
    raw = best("raw write")
    print(f"      dispatch-aio writing / raw asyncpg's writes: {best('da write') / raw:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="drain rounds (default 3)")
    parser.add_argument(
        "--drains-only",
        action="store_true",
        help="only drains (a) and (b): no history to load, no latency (minutes less)",
    )
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=max(1, args.rounds))
    if args.drains_only:
        settings = dataclasses.replace(settings, drains_only=True)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
