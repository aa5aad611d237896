"""Publish throughput against raw asyncpg doing the same writes, on a durable PostgreSQL.

Run: ``python benchmarks/publish.py [--seconds N]``. Starts its own embedded PostgreSQL
with fsync on (every commit is a real disk flush, as in production), migrates it and
measures, in the same run and against the same server:

(a) ``publish`` in its own transaction      vs a raw INSERT of the same row
(b) ``publish`` in the caller's transaction  vs the same transaction with a raw INSERT;
    both also UPDATE one ``credit_reservation`` row and commit          (goal: <= 1.3x time)
(c) ``publish_many`` of 100                  vs raw ``copy_records_to_table`` of the same
    100 rows (goal: >= 0.7x rows/s), and vs the same multi-row INSERT sent raw

with 1 and 4 concurrent connections, under three NOTIFY set-ups: the statement-level
trigger (the default: one notification per event type and transaction), a per-row
trigger (``pg_notify`` for every row, as the TypeScript predecessor did) and no trigger
(poll-only). Raw baselines generate the same ids, payloads and JSON; they skip the
envelope, validation and telemetry. Publish and raw runs alternate in short slices, and
each ratio is the median over neighbouring slices, so that drift in the disk or the machine
hits both alike (rates are totals). pgbench's simple-update TPS on the same server is
printed as the disk's commit ceiling. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import uuid_utils

from dispatch_aio import Dispatcher, EventSpec, Registry, Telemetry, migrate
from dispatch_aio._sql import queries
from dispatch_aio.testing import EmbeddedPostgres

EVENT_TYPE = "credit.locked"
ACTOR = "system:revenue"
PRODUCER = "revenue"
TENANT = "tnt_sguild"
BATCH = 100
DOMAIN_ROWS = 4096
SLICE = 0.25  # seconds: sides alternate in slices this long
CONCURRENCY = (1, 4)
COLUMNS = (
    "event_id",
    "event_type",
    "schema_version",
    "tenant_id",
    "producer",
    "subject",
    "actor",
    "occurred_at",
    "correlation_id",
    "causation_id",
    "traceparent",
    "payload",
    "checked_against",
)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

PER_ROW_TRIGGER = """
DROP TRIGGER IF EXISTS dispatcher_event_notify ON dispatcher_event;
CREATE OR REPLACE FUNCTION bench_notify_per_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dispatcher_event_inserted', NEW.event_type);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify_per_row AFTER INSERT ON dispatcher_event
    FOR EACH ROW EXECUTE FUNCTION bench_notify_per_row();
"""
DROP_PER_ROW_TRIGGER = "DROP TRIGGER IF EXISTS bench_notify_per_row ON dispatcher_event"

# ----------------------------------------------------------------------------- workload


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid_utils.uuid7()}"


class Workload:
    """Fresh, realistic credit.locked events; the same generator feeds both sides."""

    def __init__(self, registry: Registry) -> None:
        self.example = registry.example_payload(EVENT_TYPE)
        self.version = registry.current_version(EVENT_TYPE)
        q = queries("public")
        self.insert_event = q.insert_event
        self.insert_events = q.insert_events

    def payload(self) -> tuple[str, dict[str, Any]]:
        person = _id("per")
        payload = dict(self.example)
        payload["credit_reservation_id"] = _id("crr")
        payload["lesson_id"] = _id("les")
        payload["person_id"] = person
        return person, payload

    def raw_row(self) -> tuple[Any, ...]:
        """What a hand-written outbox insert sends: same ids, same JSON, no checks (and so
        no digest of a schema checked against: NULL)."""
        subject, payload = self.payload()
        return (
            _id("evt"),
            EVENT_TYPE,
            self.version,
            TENANT,
            PRODUCER,
            subject,
            ACTOR,
            datetime.now(UTC),
            None,
            None,
            None,
            _dumps(payload),
            None,
        )

    def specs(self) -> list[EventSpec]:
        specs: list[EventSpec] = []
        for _ in range(BATCH):
            subject, payload = self.payload()
            specs.append(
                {"event_type": EVENT_TYPE, "payload": payload, "subject": subject, "actor": ACTOR}
            )
        return specs


# ----------------------------------------------------------------------------- measuring

# One unit of work on a worker's connection; returns how many events it wrote.
Op = Callable[[asyncpg.Connection, int], Awaitable[int]]


@dataclass
class Tally:
    events: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # seconds of this process's CPU (the client's: the server is apart)
    slices: list[float] = field(default_factory=list)  # rate of each slice, in order

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def _slice(pool: asyncpg.Pool, op: Op, workers: int, seconds: float) -> Tally:
    conns = [await pool.acquire() for _ in range(workers)]
    try:
        for index, conn in enumerate(conns):  # warm statement caches
            await op(conn, index)
        counts = [0] * workers
        start = time.perf_counter()
        start_cpu = time.process_time()
        deadline = start + seconds

        async def work(index: int) -> None:
            conn = conns[index]
            while time.perf_counter() < deadline:
                counts[index] += await op(conn, index)

        await asyncio.gather(*(work(i) for i in range(workers)))
        return Tally(sum(counts), time.perf_counter() - start, time.process_time() - start_cpu)
    finally:
        for conn in conns:
            await pool.release(conn)


async def compare(
    pool: asyncpg.Pool, ops: dict[str, Op], workers: int, seconds: float
) -> dict[str, Tally]:
    """Run every op for ``seconds`` in total, alternating between them in slices."""
    tallies = {name: Tally() for name in ops}
    rounds = max(2, round(seconds / SLICE))
    for _ in range(rounds):
        for name, op in ops.items():
            got = await _slice(pool, op, workers, seconds / rounds)
            tallies[name].events += got.events
            tallies[name].seconds += got.seconds
            tallies[name].cpu += got.cpu
            tallies[name].slices.append(got.rate)
    return tallies


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Row:
    notify: str
    scenario: str
    workers: int
    ours: str
    ours_rate: float
    base: str
    base_rate: float
    unit: str
    rate_ratio: float  # ours / baseline, the median over neighbouring slices
    ours_cpu_us: float  # client CPU per event (or row), microseconds
    base_cpu_us: float

    @property
    def time_ratio(self) -> float:
        """Time of ours over time of the baseline for the same work."""
        return 1 / self.rate_ratio if self.rate_ratio else float("inf")


def paired_ratio(ours: Tally, base: Tally) -> float:
    """Median of ours/baseline over slices run back to back: robust to a drifting disk."""
    ratios = sorted(o / b for o, b in zip(ours.slices, base.slices, strict=True) if b and o)
    return statistics.median(ratios) if ratios else 0.0


def cpu_us(tally: Tally) -> float:
    """Client CPU per event: the part of a side's cost that the machine's load moves least."""
    return tally.cpu / tally.events * 1e6 if tally.events else 0.0


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)


def scenario_ops(
    pool: asyncpg.Pool, dispatcher: Dispatcher, work: Workload
) -> dict[str, dict[str, Op]]:
    """The scenarios: name -> {side name -> op}."""

    async def publish_own(conn: asyncpg.Connection, index: int) -> int:
        subject, payload = work.payload()
        await dispatcher.publish(EVENT_TYPE, payload, subject=subject, actor=ACTOR)
        return 1

    async def raw_own(conn: asyncpg.Connection, index: int) -> int:
        row = work.raw_row()
        async with pool.acquire() as own:
            await own.execute(work.insert_event, *row)
        return 1

    counters = [0] * max(CONCURRENCY)

    def reservation(index: int) -> tuple[str, str]:
        # Each worker updates its own rows: no lock waits between workers.
        counters[index] += 1
        rid = f"crr_{index}_{counters[index] % (DOMAIN_ROWS // max(CONCURRENCY))}"
        return rid, "locked" if counters[index] % 2 else "reserved"

    async def publish_in_tx(conn: asyncpg.Connection, index: int) -> int:
        rid, state = reservation(index)
        subject, payload = work.payload()
        async with conn.transaction():
            await conn.execute("UPDATE credit_reservation SET state = $2 WHERE id = $1", rid, state)
            await dispatcher.publish(EVENT_TYPE, payload, subject=subject, actor=ACTOR, conn=conn)
        return 1

    async def raw_in_tx(conn: asyncpg.Connection, index: int) -> int:
        rid, state = reservation(index)
        row = work.raw_row()
        async with conn.transaction():
            await conn.execute("UPDATE credit_reservation SET state = $2 WHERE id = $1", rid, state)
            await conn.execute(work.insert_event, *row)
        return 1

    async def publish_many(conn: asyncpg.Connection, index: int) -> int:
        await dispatcher.publish_many(work.specs())
        return BATCH

    async def raw_copy(conn: asyncpg.Connection, index: int) -> int:
        rows = [work.raw_row() for _ in range(BATCH)]
        async with pool.acquire() as own:
            await own.copy_records_to_table("dispatcher_event", records=rows, columns=COLUMNS)
        return BATCH

    async def raw_multirow(conn: asyncpg.Connection, index: int) -> int:
        rows = [work.raw_row() for _ in range(BATCH)]
        columns = [list(column) for column in zip(*rows, strict=True)]
        async with pool.acquire() as own:
            await own.execute(work.insert_events, *columns)
        return BATCH

    return {
        "a own tx": {"publish": publish_own, "raw INSERT": raw_own},
        "b caller tx": {"publish": publish_in_tx, "raw INSERT": raw_in_tx},
        "c batch 100": {
            "publish_many": publish_many,
            "raw COPY": raw_copy,
            "raw unnest INSERT": raw_multirow,
        },
    }


async def set_notify_mode(pool: asyncpg.Pool, mode: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(DROP_PER_ROW_TRIGGER)
        await migrate(conn, notify=mode == "statement")
        if mode == "per-row":
            await conn.execute(PER_ROW_TRIGGER)
        # Same starting point for every mode: an empty log, a fresh checkpoint.
        await conn.execute("TRUNCATE dispatcher_event")
        await conn.execute("CHECKPOINT")


async def measure(dsn: str, seconds: float, modes: list[str], only: list[str]) -> Results:
    registry = Registry.load()
    work = Workload(registry)
    results = Results()
    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            await conn.execute("CREATE TABLE credit_reservation (id text PRIMARY KEY, state text)")
            per_worker = DOMAIN_ROWS // max(CONCURRENCY)
            await conn.copy_records_to_table(
                "credit_reservation",
                records=[
                    (f"crr_{w}_{i}", "reserved")
                    for w in range(max(CONCURRENCY))
                    for i in range(per_worker)
                ],
            )
        dispatcher = Dispatcher(pool, producer=PRODUCER, tenant_id=TENANT, registry=registry)
        scenarios = scenario_ops(pool, dispatcher, work)
        for mode in modes:
            await set_notify_mode(pool, mode)
            for scenario, ops in scenarios.items():
                if only and scenario[0] not in only:
                    continue
                for workers in CONCURRENCY:
                    tallies = await compare(pool, ops, workers, seconds)
                    names = list(ops)
                    ours = names[0]
                    for base in names[1:]:
                        unit = "rows/s" if scenario.startswith("c") else "events/s"
                        results.rows.append(
                            Row(
                                mode,
                                scenario,
                                workers,
                                ours,
                                tallies[ours].rate,
                                base,
                                tallies[base].rate,
                                unit,
                                paired_ratio(tallies[ours], tallies[base]),
                                cpu_us(tallies[ours]),
                                cpu_us(tallies[base]),
                            )
                        )
                    print(f"  measured {mode:9} {scenario:11} x{workers}", file=sys.stderr)
    finally:
        await asyncio.wait_for(pool.close(), timeout=30)
    return results


def cpu_per_event(registry: Registry) -> tuple[float, float]:
    """Microseconds of Python per event: publish's build() vs building the raw row."""
    work = Workload(registry)
    dispatcher = Dispatcher(None, producer=PRODUCER, tenant_id=TENANT, registry=registry)
    subjects_payloads = [work.payload() for _ in range(2000)]

    def ours() -> None:
        for subject, payload in subjects_payloads:
            dispatcher.build(EVENT_TYPE, payload, subject=subject, actor=ACTOR)

    def raw() -> None:
        for _ in subjects_payloads:
            work.raw_row()

    def best(fn: Callable[[], None]) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) / len(subjects_payloads) * 1e6

    def payloads() -> None:
        for _ in subjects_payloads:
            work.payload()

    # raw_row makes its fresh payload too: add that cost to ours, like for like.
    return best(ours) + best(payloads), best(raw)


# ----------------------------------------------------------------------------- pgbench


def pgbench_tps(server: EmbeddedPostgres, seconds: int) -> dict[int, float]:
    """simple-update TPS with 1 and 4 clients: what this disk commits per second."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    base = ["-h", str(server.socket_dir), "-p", str(server.port), "-U", "postgres"]

    def run(argv: list[str]) -> str:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr[-2000:]}")
        return done.stdout

    run([str(server.bin / "psql"), *base, "-d", "postgres", "-c", "CREATE DATABASE pgbench"])
    run([str(server.bin / "pgbench"), *base, "-i", "-q", "pgbench"])
    found: dict[int, float] = {}
    for clients in CONCURRENCY:
        out = run(
            [
                str(server.bin / "pgbench"),
                *base,
                "-b",
                "simple-update",
                "-c",
                str(clients),
                "-j",
                str(min(clients, os.cpu_count() or 1)),
                "-T",
                str(seconds),
                "pgbench",
            ]
        )
        match = re.search(r"tps = ([0-9.]+)", out)
        if match is None:
            raise RuntimeError(f"no tps in pgbench output:\n{out}")
        found[clients] = float(match.group(1))
    return found


# ----------------------------------------------------------------------------- report


def report(
    results: Results, ceiling: dict[int, float], cpu: tuple[float, float], seconds: float
) -> bool:
    print()
    print(
        f"dispatch-aio publish benchmark  (PostgreSQL fsync=on, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {seconds:g} s per side)"
    )
    print()
    for clients, tps in ceiling.items():
        print(f"pgbench simple-update, {clients} client(s): {tps:9,.0f} TPS  (commit ceiling)")
    print(
        f"Python per event: build() {cpu[0]:.1f} us vs raw row {cpu[1]:.1f} us "
        "(fresh ids and payload in both)"
    )
    print()
    header = (
        f"{'notify':9} {'scenario':11} {'conns':>5}  {'ours':12} {'rate':>9}  "
        f"{'baseline':17} {'rate':>9}  {'unit':8} {'time x':>6} {'rate x':>6}  "
        f"{'cpu us ours/base':>16}"
    )
    print(header)
    print("-" * len(header))
    for row in results.rows:
        print(
            f"{row.notify:9} {row.scenario:11} {row.workers:>5}  {row.ours:12} "
            f"{row.ours_rate:9,.0f}  {row.base:17} {row.base_rate:9,.0f}  {row.unit:8} "
            f"{row.time_ratio:6.2f} {row.rate_ratio:6.2f}  "
            f"{row.ours_cpu_us:7.1f}/{row.base_cpu_us:<7.1f}"
        )
    print()
    ok = True
    for row in results.rows:
        if row.notify != "statement":
            continue
        if row.scenario.startswith("b"):
            passed = row.time_ratio <= 1.3
            goal = f"publish in caller tx takes <= 1.3x the raw tx's time: {row.time_ratio:.2f}x"
        elif row.scenario.startswith("c") and row.base == "raw COPY":
            passed = row.rate_ratio >= 0.7
            goal = f"publish_many(100) reaches >= 0.7x raw COPY rows/s: {row.rate_ratio:.2f}x"

        else:
            continue
        ok = ok and passed
        print(f"{'PASS' if passed else 'FAIL'}  {goal}  ({row.workers} conn)")
    # Instrumentation: its CPU cost per call against the measured time of that call. A
    # throughput A/B of the same size drowns in the disk's noise (+-10 % between slices).
    telemetry_us = instrumentation_cost_us()
    for row in results.rows:
        if row.notify != "statement" or row.workers != 1 or row.base == "raw unnest INSERT":
            continue
        if not (row.scenario.startswith("b") or row.scenario.startswith("c")):
            continue
        per_call_us = 1e6 / row.ours_rate * (BATCH if row.scenario.startswith("c") else 1)
        overhead = telemetry_us / per_call_us * 100
        passed = overhead < 5
        ok = ok and passed
        print(
            f"{'PASS' if passed else 'FAIL'}  instrumentation (no-op provider) costs < 5% of "
            f"{row.ours}: {telemetry_us:.2f} us of {per_call_us:,.0f} us = {overhead:.2f}%"
        )
    return ok


def instrumentation_cost_us(calls: int = 20_000) -> float:
    """CPU time of publish's telemetry (span + counter) per call, OpenTelemetry API only."""
    telemetry = Telemetry.default()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            with telemetry.publish_span(EVENT_TYPE, PRODUCER):
                pass
            telemetry.published(EVENT_TYPE, PRODUCER, 1)
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="measured time per side and case"
    )
    parser.add_argument("--pgbench-seconds", type=int, default=5)
    parser.add_argument(
        "--notify",
        action="append",
        choices=["statement", "per-row", "none"],
        help="NOTIFY set-ups to measure (default: all three)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["a", "b", "c"],
        help="scenarios to measure, by letter (default: all three)",
    )
    args = parser.parse_args()
    modes = args.notify or ["statement", "per-row", "none"]
    with EmbeddedPostgres(fsync=True) as server:
        ceiling = pgbench_tps(server, args.pgbench_seconds)
        results = asyncio.run(measure(server.dsn(), args.seconds, modes, args.scenario or []))
    cpu = cpu_per_event(Registry.load())
    return 0 if report(results, ceiling, cpu, args.seconds) else 1


if __name__ == "__main__":
    sys.exit(main())
