"""The CPU-bound drain of ``benchmarks/scale.py`` without dispatch-aio: its baseline.

What the machine allows N processes doing the same work, measured in the same run: how
much 4 processes on 2 cores lose against 2 when no library is involved at all. Each
process is ``python _scale_raw.py DSN SHARE CONCURRENCY`` and works as the consumer's
workers do, with the least around it:

- its events are known up front: the subjects of its share (table ``raw_share``, a split
  made before the drain with event counts as even as they can be, which no real group of
  consumers knows ahead of time), read in one statement once the backlog has committed;
- ``CONCURRENCY`` connections, each taking whole subjects (so each subject's events run
  in position order) into a transaction of up to 50 events;
- each event runs the benchmark's own handler body (``_scale_worker``: ~2 ms of CPU, then
  its effect written through the transaction), and the transaction commits one marker
  row per event with the effects (``raw_done``: what dispatch-aio's dedup marker is).

No reads while draining, no leases, no cursors, no fencing: a floor, not a competitor.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import _common as common
import asyncpg
from _scale_db import (
    DRAIN_TIMEOUT,
    EFFECTS_DDL,
    check_effects,
    commit_times,
    cpu_seconds,
    server_pids,
)
from _scale_worker import CPU_SECONDS, EFFECT, burn

__all__ = ["drain", "split"]

GROUP = 50
SCRIPT = os.path.abspath(__file__)
RAW_DDL = (
    "CREATE TABLE raw_share (subject text PRIMARY KEY, share integer NOT NULL);"
    "CREATE TABLE raw_done (event_id text PRIMARY KEY)"
)
SHARE_EVENTS = (
    "SELECT e.position, e.event_id, e.subject FROM dispatcher_event e "
    "JOIN raw_share s ON s.subject = e.subject WHERE s.share = $1 ORDER BY e.position"
)
MARK = "INSERT INTO raw_done (event_id) SELECT unnest($1::text[])"


def split(counts: dict[str, int], shares: int) -> dict[str, int]:
    """Subjects to shares, the biggest subject first to the share with the fewest events."""
    load = [0] * shares
    out: dict[str, int] = {}
    for subject, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        share = min(range(shares), key=lambda s: (load[s], s))
        out[subject] = share
        load[share] += n
    return out


@dataclass
class RawWorker:
    """One baseline process: spawned ready, drains its share on :meth:`go`."""

    process: asyncio.subprocess.Process

    @classmethod
    async def spawn(cls, dsn: str, share: int, concurrency: int) -> RawWorker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            dsn,
            str(share),
            str(concurrency),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"baseline worker {share} did not start: {line!r}")
        return cls(process)

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def done(self) -> None:
        """Until its share is drained (its connections stay open: their CPU is read)."""
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if line.strip() != b"done":
            raise RuntimeError(f"baseline worker {self.process.pid} failed: {line!r}")

    async def stop(self) -> None:
        """Let it close its connections and exit (killed if it does not)."""
        assert self.process.stdin is not None
        if self.process.returncode is None:
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def drain(
    server: common.BenchServer,
    specs: Sequence[dict[str, Any]],
    *,
    processes: int,
    concurrency: int,
    label: str,
) -> tuple[float, list[int], str]:
    """Drain the backlog ``specs`` with ``processes`` baseline processes: events per
    second (first commit of the backlog to the last of the outcomes), events per process,
    and a line on the CPU used per event."""
    dsn = await server.create_database(f"scale_raw_{processes}")
    pool = await common.open_pool(dsn, 2)
    workers: list[RawWorker] = []
    try:
        await pool.execute(EFFECTS_DDL + ";" + RAW_DDL)
        counts: dict[str, int] = {}
        for spec in specs:
            counts[spec["subject"]] = counts.get(spec["subject"], 0) + 1
        shares = split(counts, processes)
        await pool.executemany("INSERT INTO raw_share VALUES ($1, $2)", list(shares.items()))
        await common.settle(pool, "dispatcher_event", "raw_share")
        workers = [await RawWorker.spawn(dsn, k, concurrency) for k in range(processes)]
        publisher = common.dispatcher(pool)
        async with pool.acquire() as conn:
            pg_pids = await server_pids(conn)
            pids = pg_pids + [w.process.pid for w in workers]
            cpu_before = {p: cpu_seconds(p) for p in pids}
            async with conn.transaction():
                for start in range(0, len(specs), 1000):
                    await publisher.publish_many(specs[start : start + 1000], conn=conn)  # type: ignore[arg-type]
            for worker in workers:
                worker.go()
            await asyncio.wait_for(asyncio.gather(*(w.done() for w in workers)), DRAIN_TIMEOUT)
            cpu_after = {p: cpu_seconds(p) for p in pids}
            started, finished = await commit_times(conn, "SELECT xmin FROM raw_done")
            await check_effects(conn, len(specs), label)
            rows = await conn.fetch("SELECT pid, count(*) AS n FROM effects GROUP BY pid")
    finally:
        for worker in workers:
            await worker.stop()
        await pool.close()
    events = len(specs)
    client = sum(cpu_after[w.process.pid] - cpu_before[w.process.pid] for w in workers)
    server_cpu = sum(cpu_after[p] - cpu_before[p] for p in pg_pids)
    line = (
        f"no library, subjects split evenly up front: CPU {client / events * 1000:.2f}"
        f" ms/event in the workers, {server_cpu / events * 1000:.2f} ms/event in the server"
    )
    return events / (finished - started), sorted((r["n"] for r in rows), reverse=True), line


async def _work(dsn: str, share: int, concurrency: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    assert pool is not None
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    subjects: dict[str, list[asyncpg.Record]] = {}
    for row in await pool.fetch(SHARE_EVENTS, share):
        subjects.setdefault(row["subject"], []).append(row)
    queue = list(subjects.values())
    pid = os.getpid()

    async def work() -> None:
        async with pool.acquire() as conn:
            while queue:
                group = queue.pop()
                while queue and len(group) + len(queue[-1]) <= GROUP:
                    group += queue.pop()
                async with conn.transaction():
                    for e in group:
                        burn(CPU_SECONDS)
                        await conn.execute(EFFECT, e["event_id"], e["subject"], e["position"], pid)
                    await conn.execute(MARK, [e["event_id"] for e in group])

    await asyncio.gather(*(work() for _ in range(concurrency)))
    print("done", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await pool.close()


if __name__ == "__main__":
    asyncio.run(_work(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
