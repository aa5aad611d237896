"""Consumer groups: N worker processes of one consumer, on one backlog.

    python benchmarks/scale.py              # full sizes
    python benchmarks/scale.py --rounds 3   # every drain 3 times; goals on the median ratio
    python benchmarks/scale.py --only io    # only the I/O-bound drains (or: --only cpu)
    python benchmarks/scale.py --quick      # small sizes: a smoke run, figures meaningless
    python benchmarks/scale.py --only cpu --cpu-concurrency 2   # the CPU-bound drains at 2

Each process is ``dispatch-aio worker _scale_worker:make`` (a subprocess, as a
Deployment would run it). The backlog is published in one transaction once every
process has started, and a drain counts from that commit to the last outcome committed,
both read from the server's commit timestamps (``track_commit_timestamp``): a poll only
tells when to look, up to 100 ms late.

(a) CPU-bound: a handler that burns ~2 ms of CPU, 3,000 events over 300 subjects, 1 vs 2
    vs 4 processes (goals: 2 processes >= 1.7x one; 4 no slower than 2). Baseline in the
    same round: the same work by 2 and by 4 processes without the library
    (``_scale_raw``: raw asyncpg, subjects split evenly up front), what 2 cores allow;
(b) I/O-bound: a handler that awaits 20 ms, concurrency 16, 1 vs 4 processes (goal:
    >= 3.5x);
(c) rebalance: from SIGTERM, and from kill -9, of one of 3 processes to its partitions
    being served again (needs partitioned consumers: ADR 0006).

Every drain is checked: every event handled once (effects written through the event's
connection), and per subject in position order. Which process did how much is printed.
Within a round every drain gets the same backlog (the same subjects and event counts), so
a ratio compares one workload drained two ways; each round draws a new backlog. On a
shared machine one round's ratios vary by several percent: compare medians of rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as common
import _scale_raw as baseline
import asyncpg
from _scale_db import (
    DRAIN_TIMEOUT,
    EFFECTS_DDL,
    SERVER_SETTINGS,
    check_effects,
    commit_times,
    cpu_seconds,
    server_pids,
)

HERE = Path(__file__).resolve().parent
WORKER = "_scale_worker:make"
EVENT_TYPE = "credit.locked"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Sizes:
    events: int
    subjects: int


FULL = Sizes(events=3_000, subjects=300)
#: Each process's concurrency in the CPU-bound drains. A handler that holds the event
#: loop for 2 ms gains little from more (it only overlaps the database round trips).
CPU_CONCURRENCY = 8
QUICK = Sizes(events=300, subjects=30)


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def worker_command() -> list[str]:
    script = Path(sys.executable).with_name("dispatch-aio")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dispatch_aio.cli"]


class Worker:
    """One ``dispatch-aio worker`` subprocess; ``started`` once its consumer runs."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.started = asyncio.Event()
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "consumer started" in line:
                self.started.set()

    @classmethod
    async def spawn(cls, dsn: str, name: str, handler: str, concurrency: int) -> Worker:
        env = {
            **os.environ,
            "SCALE_CONSUMER": name,
            "SCALE_HANDLER": handler,
            "SCALE_CONCURRENCY": str(concurrency),
        }
        process = await asyncio.create_subprocess_exec(
            *worker_command(),
            "--dsn",
            dsn,
            "worker",
            WORKER,
            "--pool-size",
            str(concurrency + 2),
            cwd=HERE,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout=60)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await self.reader
        return code


@dataclass
class Drain:
    label: str
    processes: int
    rate: float
    per_process: list[int]
    timeline: list[str]


LEASES = "SELECT partition, owner, epoch, acquired_at FROM dispatcher_lease WHERE consumer = $1"


async def timeline(
    conn: asyncpg.Connection,
    name: str,
    workers: list[Worker],
    committed_at: float,
    leases_before: list[asyncpg.Record],
    cpu_before: dict[int, float],
    cpu_after: dict[int, float],
    server_cpu: float,
) -> list[str]:
    """Per process, relative to the backlog's commit: when it joined, when it took its
    last partition, its first and last handled event, events handled, CPU used in the
    drain, events handled per 100 ms and the longest pause within one subject's events;
    then the partitions that moved during the drain and the server's CPU."""
    members = {
        r["member_id"]: r
        for r in await conn.fetch(
            "SELECT member_id, pid, started_at FROM dispatcher_member WHERE consumer = $1", name
        )
    }
    effects = {
        r["pid"]: r
        for r in await conn.fetch(
            "SELECT pid, count(*) AS n, min(at) AS first, max(at) AS last FROM effects GROUP BY pid"
        )
    }
    # Where a drain loses time: a process below its full speed, a subject left waiting.
    buckets: dict[int, dict[int, int]] = {}
    for r in await conn.fetch(
        "SELECT pid, floor((extract(epoch FROM at) - $1) * 10)::int AS bucket, count(*) AS n "
        "FROM effects GROUP BY 1, 2",
        committed_at,
    ):
        buckets.setdefault(r["pid"], {})[r["bucket"]] = r["n"]
    pauses = {
        r["pid"]: r["pause"]
        for r in await conn.fetch(
            "SELECT pid, max(gap) AS pause FROM (SELECT pid, extract(epoch FROM at - lag(at) "
            "OVER (PARTITION BY subject ORDER BY position)) AS gap FROM effects) g GROUP BY pid"
        )
    }
    after = {r["partition"]: r for r in await conn.fetch(LEASES, name)}
    moved = sum(
        1
        for r in leases_before
        if (a := after.get(r["partition"])) is None or a["epoch"] != r["epoch"]
    )
    held: dict[str, list[asyncpg.Record]] = {}
    for r in leases_before:
        held.setdefault(r["owner"], []).append(r)

    def rel(at: Any) -> str:
        return "-" if at is None else f"{at.timestamp() - committed_at:+.3f}"

    lines = []
    for worker in workers:
        pid = worker.process.pid
        member = next((m for m in members.values() if m["pid"] == pid), None)
        leases = held.get(member["member_id"], []) if member else []
        last_lease = max((r["acquired_at"] for r in leases if r["acquired_at"]), default=None)
        e = effects.get(pid)
        n = e["n"] if e else 0
        cpu = cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0)
        per_event = f"{cpu / n * 1000:.2f}" if n else "-"
        lines.append(
            f"pid {pid}: joined {rel(member['started_at'] if member else None)} s, "
            f"{len(leases)} partitions (last taken {rel(last_lease)} s), "
            f"events {n} from {rel(e['first'] if e else None)} to "
            f"{rel(e['last'] if e else None)} s, CPU {cpu:.2f} s ({per_event} ms/event)"
        )
        counts = buckets.get(pid, {})
        pause = pauses.get(pid)
        lines.append(
            "  per 100 ms: "
            + " ".join(str(counts.get(b, 0)) for b in range(max(counts, default=-1) + 1))
            + "; longest pause in a subject: "
            + ("-" if pause is None else f"{float(pause) * 1000:.0f} ms")
        )
    total = sum(r["n"] for r in effects.values()) or 1
    lines.append(
        f"partitions moved during the drain: {moved}; server CPU {server_cpu:.2f} s "
        f"({server_cpu / total * 1000:.2f} ms/event)"
    )
    return lines


async def drain(
    server: common.BenchServer,
    sizes: Sizes,
    *,
    processes: int,
    handler: str,
    concurrency: int,
    label: str,
    seed: int,
) -> Drain:
    name = f"scale_{handler}_{processes}"
    dsn = await server.create_database(f"scale_{handler}_{processes}")
    pool = await common.open_pool(dsn, 4)
    workers: list[Worker] = []
    try:
        await pool.execute(EFFECTS_DDL)
        factory = common.PayloadFactory()
        specs = common.backlog_specs(
            sizes.events, common.subjects(sizes.subjects), EVENT_TYPE, factory, seed=seed
        )
        await common.settle(pool, "dispatcher_event")
        workers = [await Worker.spawn(dsn, name, handler, concurrency) for _ in range(processes)]
        for worker in workers:
            await asyncio.wait_for(worker.started.wait(), START_TIMEOUT)
        # Steady state, as a running Deployment is: every process holds its share of the
        # partitions before the backlog arrives (the rebalance is measured in (c)).
        await wait_balanced(pool, name, processes)
        publisher = common.dispatcher(pool)
        async with pool.acquire() as conn:
            leases_before = await conn.fetch(LEASES, name)
            pg_pids = await server_pids(conn)
            cpu_before = {p: cpu_seconds(p) for p in pg_pids + [w.process.pid for w in workers]}
            async with conn.transaction():
                for start in range(0, len(specs), 1000):
                    await publisher.publish_many(specs[start : start + 1000], conn=conn)  # type: ignore[arg-type]
            committed = time.perf_counter()
            deadline = committed + DRAIN_TIMEOUT
            while True:
                done = await conn.fetchval(
                    "SELECT count(*) FROM dispatcher_dedup WHERE consumer = $1", name
                )
                now = time.perf_counter()
                if done >= sizes.events:
                    break
                if now > deadline:
                    raise TimeoutError(f"{label}: {done} of {sizes.events} after {DRAIN_TIMEOUT}s")
                await asyncio.sleep(poll_delay(done, sizes.events, now - committed))
            cpu_after = {p: cpu_seconds(p) for p in cpu_before}
            server_cpu = sum(cpu_after[p] - cpu_before[p] for p in pg_pids)
            committed_at, finished_at = await commit_times(
                conn, f"SELECT xmin FROM dispatcher_dedup WHERE consumer = '{name}'"
            )
            await check_effects(conn, sizes.events, label)
            rows = await conn.fetch("SELECT pid, count(*) AS n FROM effects GROUP BY pid")
            lines = await timeline(
                conn,
                name,
                workers,
                committed_at,
                leases_before,
                cpu_before,
                cpu_after,
                server_cpu,
            )
    finally:
        for worker in workers:
            await worker.stop()
        await pool.close()
    per_process = sorted((r["n"] for r in rows), reverse=True)
    return Drain(label, processes, sizes.events / (finished_at - committed_at), per_process, lines)


async def raw_drain(
    server: common.BenchServer, sizes: Sizes, *, processes: int, concurrency: int, seed: int
) -> Drain:
    """The CPU-bound drain without the library (``_scale_raw``), on the same backlog."""
    specs = common.backlog_specs(
        sizes.events,
        common.subjects(sizes.subjects),
        EVENT_TYPE,
        common.PayloadFactory(),
        seed=seed,
    )
    label = f"raw x{processes}"
    rate, per_process, line = await baseline.drain(
        server, specs, processes=processes, concurrency=concurrency, label=label
    )
    return Drain(label, processes, rate, per_process, [line])


def poll_delay(done: int, total: int, elapsed: float) -> float:
    """Seconds until the next look at the drain: 10 ms once the end may be near.

    Each look counts the outcomes so far, a query on the measured server; looking every
    10 ms all along takes CPU from the processes measured on these 2 cores. Far from the
    end (a quarter of the time left at the rate so far), looks are up to 100 ms apart.
    """
    if done == 0:
        return 0.01
    left = (total - done) * elapsed / done
    return min(0.1, max(0.01, left / 4))


async def wait_balanced(pool: asyncpg.Pool, name: str, processes: int) -> None:
    """Until ``processes`` members hold every partition between them."""
    deadline = time.perf_counter() + START_TIMEOUT
    while True:
        owners, unowned = await pool.fetchrow(
            "SELECT count(DISTINCT owner), 256 - count(owner) FROM dispatcher_lease "
            "WHERE consumer = $1",
            name,
        )
        if owners == processes and unowned == 0:
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{name}: {owners} owners, {unowned} partitions unowned")
        await asyncio.sleep(0.05)


UNSERVED = """
SELECT count(*) FROM dispatcher_lease l
WHERE l.consumer = $1 AND (l.owner IS NULL OR l.owner = $2 OR NOT EXISTS (
    SELECT 1 FROM dispatcher_member m
    WHERE m.consumer = l.consumer AND m.member_id = l.owner AND m.expires_at > now()))
"""


async def until_zero(pool: asyncpg.Pool, consumer: str, gone: str) -> None:
    deadline = time.perf_counter() + START_TIMEOUT
    while await pool.fetchval(UNSERVED, consumer, gone):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"partitions of {consumer} still unserved after {START_TIMEOUT}s")
        await asyncio.sleep(0.01)


async def rebalance(server: common.BenchServer) -> list[tuple[str, float]] | None:
    """Seconds from SIGTERM, then from kill -9, of one of 3 workers until every partition
    is held by a live other member again; None when workers do not join a group yet."""
    name = "scale_rebalance"
    dsn = await server.create_database(name)
    pool = await common.open_pool(dsn, 2)
    workers: list[Worker] = []
    found: list[tuple[str, float]] = []
    try:
        await pool.execute(EFFECTS_DDL)
        workers = [await Worker.spawn(dsn, name, "io", 4) for _ in range(3)]
        for worker in workers:
            await asyncio.wait_for(worker.started.wait(), START_TIMEOUT)
        members = await pool.fetchval(
            "SELECT count(*) FROM dispatcher_member WHERE consumer = $1", name
        )
        if members != len(workers):
            return None  # consumers that do not lease partitions yet
        for how, sig in (("SIGTERM", signal.SIGTERM), ("kill -9", signal.SIGKILL)):
            await until_zero(pool, name, "")
            victim = workers.pop(0)
            member = await pool.fetchval(
                "SELECT member_id FROM dispatcher_member WHERE consumer = $1 AND pid = $2",
                name,
                victim.process.pid,
            )
            start = time.perf_counter()
            victim.process.send_signal(sig)
            await until_zero(pool, name, member)
            found.append((how, time.perf_counter() - start))
            await victim.stop()
    finally:
        for worker in workers:
            await worker.stop()
        await pool.close()
    return found


GOALS = [
    ("2 processes drain >= 1.7x one (cpu)", "cpu x2", "cpu x1", 1.7),
    ("4 processes are no slower than 2 (cpu)", "cpu x4", "cpu x2", 1.0),
    ("4 processes drain >= 3.5x one (io, concurrency 16)", "io x4", "io x1", 3.5),
]
#: Ratios without a goal: the same CPU-bound work without the library, what 2 cores give.
BASELINES = [
    ("4 processes vs 2 without the library (cpu, same work)", "raw x4", "raw x2"),
    ("dispatch-aio against no library (cpu, 2 processes)", "cpu x2", "raw x2"),
    ("dispatch-aio against no library (cpu, 4 processes)", "cpu x4", "raw x4"),
]


def ratios_of(by_round: list[list[Drain]], ours: str, base: str) -> list[float]:
    """The ratio of drain ``ours`` to drain ``base`` in every round that ran both."""
    ratios = []
    for results in by_round:
        rate = {r.label: r.rate for r in results}
        if ours in rate and base in rate:
            ratios.append(rate[ours] / rate[base])
    return ratios


def show(ratios: list[float]) -> str:
    """The median, and each round's ratio when there are several. Three decimals: a
    median of 1.699 against a goal of 1.7 must not read 1.70."""
    each = f" (rounds: {', '.join(f'{r:.3f}' for r in ratios)})" if len(ratios) > 1 else ""
    return f"{statistics.median(ratios):.3f}x{each}"


async def one_round(
    server: common.BenchServer, sizes: Sizes, only: str | None, seed: int, cpu_concurrency: int
) -> list[Drain]:
    """Every drain once, back to back, on one backlog (the same events for every number
    of processes: a ratio compares one workload drained two ways)."""
    plan = [("cpu", cpu_concurrency, n) for n in (1, 2, 4) if only in (None, "cpu")]
    plan += [("io", 16, n) for n in (1, 4) if only in (None, "io")]
    results = []
    if only in (None, "cpu"):
        for processes in (2, 4):
            log(f"CPU-bound drain without the library, {processes} processes, backlog {seed}")
            results.append(
                await raw_drain(
                    server, sizes, processes=processes, concurrency=cpu_concurrency, seed=seed
                )
            )
    for handler, concurrency, processes in plan:
        log(f"{handler}-bound drain, {processes} process(es), backlog {seed}")
        results.append(
            await drain(
                server,
                sizes,
                processes=processes,
                handler=handler,
                concurrency=concurrency,
                label=f"{handler} x{processes}",
                seed=seed,
            )
        )
    return results


async def run(
    sizes: Sizes,
    quick: bool,
    only: str | None = None,
    rounds: int = 1,
    cpu_concurrency: int = CPU_CONCURRENCY,
) -> int:
    server = common.BenchServer.start(SERVER_SETTINGS)
    try:
        print("== settings ==")
        print(f"{common.machine_summary()}; {sizes.events} events over {sizes.subjects} subjects")
        print(f"workers: {' '.join(worker_command())} --dsn ... worker {WORKER}")
        # Each round drains its own backlog (seed), every process count on the same one.
        print(f"concurrency per process: {cpu_concurrency} CPU-bound, 16 I/O-bound")
        by_round = [
            await one_round(server, sizes, only, seed, cpu_concurrency)
            for seed in range(1, rounds + 1)
        ]
        print()
        print("== (a) and (b): drains ==")
        for index, results in enumerate(by_round, start=1):
            if rounds > 1:
                print(f"-- round {index} --")
            for r in results:
                share = ", ".join(str(n) for n in r.per_process)
                print(f"{r.label:8} {r.rate:9,.0f} events/s   effects per process: {share}")
                for line in r.timeline:
                    print(f"           {line}")
        print()
        print("== (c) rebalance ==")
        times = None
        if only is None:
            log("rebalance")
            times = await rebalance(server)
        if only is not None:
            print(f"(--only {only}: not measured)")
        elif times is not None:
            for how, seconds in times:
                print(f"{how} of 1 of 3 -> its partitions served again: {seconds:.2f} s")
        else:
            print("SIGTERM of 1 of 3 -> served again: n/a until partitions land")
            print("kill -9 of 1 of 3 -> served again: n/a until partitions land")
        print()
        print("== goals ==" + (f" (median of {rounds} rounds)" if rounds > 1 else ""))
        ok = True
        for text, ours, base, goal in GOALS:
            ratios = ratios_of(by_round, ours, base)
            if not ratios:
                continue
            passed = statistics.median(ratios) >= goal
            ok = ok and passed
            print(f"{'PASS' if passed else 'FAIL'}  {text}: {show(ratios)}")
        for text, ours, base in BASELINES:
            ratios = ratios_of(by_round, ours, base)
            if ratios:
                print(f"info  {text}: {show(ratios)}")
        if quick:
            print("(--quick: small sizes, figures meaningless)")
        return 0 if ok or quick else 1
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument(
        "--only", choices=("cpu", "io"), help="only the CPU-bound or the I/O-bound drains"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="drain every size this many times (one backlog each); goals on the median",
    )
    parser.add_argument(
        "--cpu-concurrency",
        type=int,
        default=CPU_CONCURRENCY,
        help=f"each process's concurrency in the CPU-bound drains (default {CPU_CONCURRENCY})",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    return asyncio.run(
        run(sizes, args.quick, args.only, max(1, args.rounds), max(1, args.cpu_concurrency))
    )


if __name__ == "__main__":
    sys.exit(main())
