"""Consumer groups (ADR 0006, part B) with worker subprocesses: partitions split between
processes, taken over after kill -9 or a pause past the lease, handed over on SIGTERM;
never an event lost, a handler effect doubled or a subject's order inverted."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio import Dispatcher

from .helpers import eventually, locked_payload, uid
from .test_consumer_invariants import Worker, tail

pytestmark = pytest.mark.anyio

LEASE = 3.0

# Per subject, effects in the order they committed must be in position order.
INVERSIONS = """
SELECT count(*) FROM (
    SELECT e.subject, e.position,
           lag(e.position) OVER (PARTITION BY e.subject ORDER BY f.seq) AS before
    FROM effects f JOIN dispatcher_event e ON e.event_id = f.event_id
) o
WHERE o.before > o.position
"""

# Partitions whose owner is not a live member.
UNOWNED = """
SELECT count(*) FROM generate_series(0, 255) g(p)
WHERE NOT EXISTS (
    SELECT 1 FROM dispatcher_lease l
    JOIN dispatcher_member m ON m.consumer = l.consumer AND m.member_id = l.owner
    WHERE l.consumer = 'effects' AND l.partition = g.p AND m.expires_at > now()
)
"""


async def _setup(dsn: str) -> tuple[asyncpg.Pool, Dispatcher]:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=6)
    await pool.execute("CREATE TABLE effects (event_id text PRIMARY KEY, seq bigserial)")
    return pool, Dispatcher(pool, producer="tests", tenant_id="tnt_tests")


async def _publish(dispatcher: Dispatcher, subjects: list[str], n: int) -> None:
    for start in range(0, n, 100):
        await dispatcher.publish_many(
            [
                {
                    "event_type": "credit.locked",
                    "payload": locked_payload(),
                    "subject": subjects[i % len(subjects)],
                    "actor": "system:tests",
                }
                for i in range(start, min(n, start + 100))
            ]
        )


async def _count(pool: asyncpg.Pool, sql: str) -> int:
    return int(await pool.fetchval(sql))


async def _exactly_once_in_order(pool: asyncpg.Pool, total: int) -> None:
    assert await _count(pool, "SELECT count(*) FROM effects") == total
    assert await _count(pool, "SELECT count(DISTINCT event_id) FROM effects") == total
    assert (
        await _count(pool, "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'effects'")
        == total
    )
    assert await _count(pool, "SELECT count(*) FROM dispatcher_dead_letter") == 0
    assert await _count(pool, INVERSIONS) == 0


async def _owners(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT owner, count(*) AS n FROM dispatcher_lease WHERE consumer = 'effects' "
        "AND owner IS NOT NULL GROUP BY owner"
    )
    return {r["owner"]: r["n"] for r in rows}


async def test_kill_9_of_one_of_three_mid_drain(dispatch_dsn: str, tmp_path: Path) -> None:
    pool, dispatcher = await _setup(dispatch_dsn)
    subjects = [uid("per") for _ in range(300)]
    total = 3000
    log = tmp_path / "workers.log"
    args = ("--lease-timeout", str(LEASE), "--max-sleep-ms", "5")
    workers: list[Worker] = []
    try:
        await _publish(dispatcher, subjects, total)
        workers = [await Worker.start(dispatch_dsn, log, *args) for _ in range(3)]
        # The three split the partitions.
        await eventually(
            lambda: _split(pool, 3), within=20, what=f"three owners: {tail(log)[-500:]}"
        )
        await eventually(lambda: _at_least(pool, 600), within=30, what="the drain to be under way")
        victim = workers.pop(0)
        killed_at = await pool.fetchval("SELECT now()")
        await victim.kill()
        # Its partitions are served again within lease_timeout + 1 s.
        await eventually(
            lambda: _count_is(pool, UNOWNED, 0), within=LEASE + 10, what="the takeover"
        )
        taken = await pool.fetchval(
            "SELECT max(acquired_at) FROM dispatcher_lease WHERE consumer = 'effects'"
        )
        assert (taken - killed_at).total_seconds() <= LEASE + 1
        await eventually(
            lambda: _count_is(
                pool, "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'effects'", total
            ),
            within=60,
            what="the survivors to finish",
        )
        for worker in workers:
            await worker.terminate()
        workers = []
        await _exactly_once_in_order(pool, total)
    finally:
        for worker in workers:
            await worker.kill()
        await pool.close()


async def test_a_process_paused_past_its_lease_commits_nothing_and_rejoins(
    dispatch_dsn: str, tmp_path: Path
) -> None:
    pool, dispatcher = await _setup(dispatch_dsn)
    subjects = [uid("per") for _ in range(100)]
    total = 1500
    log = tmp_path / "workers.log"
    # Slow handlers: the pause lands inside open group transactions.
    args = ("--lease-timeout", str(LEASE), "--max-sleep-ms", "40", "--concurrency", "2")
    paused = other = None
    try:
        await _publish(dispatcher, subjects, total)
        paused = await Worker.start(dispatch_dsn, log, *args)
        other = await Worker.start(dispatch_dsn, log, *args)
        await eventually(lambda: _split(pool, 2), within=20, what="two owners")
        await eventually(lambda: _at_least(pool, 100), within=30, what="some effects")
        os.kill(paused.proc.pid, signal.SIGSTOP)
        try:
            # The other one takes every partition once the lease has run out.
            await eventually(
                lambda: _sole_owner(pool), within=LEASE + 15, what="the other to take all"
            )
            before = await _count(pool, "SELECT count(*) FROM effects")
        finally:
            os.kill(paused.proc.pid, signal.SIGCONT)
        # Back, it finds its leases gone: its groups in flight are refused by the fence
        # (a duplicate would fail on effects' primary key and end as a dead letter).
        await eventually(lambda: _split(pool, 2), within=30, what="the paused one to rejoin")
        assert await _count(pool, "SELECT count(*) FROM effects") >= before
        await eventually(
            lambda: _count_is(
                pool, "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'effects'", total
            ),
            within=60,
            what="everything to finish",
        )
        await paused.terminate()
        await other.terminate()
        paused = other = None
        await _exactly_once_in_order(pool, total)
    finally:
        for worker in (paused, other):
            if worker is not None:
                await worker.kill()
        await pool.close()


@pytest.mark.slow
async def test_rolling_restart_with_sigterm_while_publishing(
    dispatch_dsn: str, tmp_path: Path
) -> None:
    pool, dispatcher = await _setup(dispatch_dsn)
    subjects = [uid("per") for _ in range(200)]
    log = tmp_path / "workers.log"
    args = ("--lease-timeout", str(LEASE), "--max-sleep-ms", "3")
    published = 0
    producing = asyncio.Event()
    producing.set()
    longest_unowned = 0.0

    async def producer() -> None:
        nonlocal published
        while producing.is_set():
            await _publish(dispatcher, subjects, 20)
            published += 20
            await asyncio.sleep(0.02)

    async def watch_unowned() -> None:
        nonlocal longest_unowned
        since: float | None = None
        while True:
            unowned = await _count(pool, UNOWNED)
            now = time.monotonic()
            if unowned and since is None:
                since = now
            elif not unowned and since is not None:
                longest_unowned = max(longest_unowned, now - since)
                since = None
            await asyncio.sleep(0.02)

    workers: list[Worker] = []
    try:
        workers = [await Worker.start(dispatch_dsn, log, *args) for _ in range(3)]
        await eventually(lambda: _split(pool, 3), within=20, what="three owners")
        producing_task = asyncio.create_task(producer())
        watcher = asyncio.create_task(watch_unowned())
        try:
            for _ in range(3):
                old = workers.pop(0)
                await old.terminate()
                workers.append(await Worker.start(dispatch_dsn, log, *args))
                await eventually(lambda: _split(pool, 3), within=20, what="three owners")
        finally:
            producing.clear()
            await producing_task
            watcher.cancel()
        await eventually(
            lambda: _count_is(
                pool,
                "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'effects'",
                published,
            ),
            within=60,
            what="everything to finish",
        )
        for worker in workers:
            await worker.terminate()
        workers = []
        await _exactly_once_in_order(pool, published)
        assert longest_unowned <= 1.0
    finally:
        for worker in workers:
            await worker.kill()
        await pool.close()


async def _split(pool: asyncpg.Pool, n: int) -> bool:
    owners = await _owners(pool)
    return len(owners) == n and sum(owners.values()) == 256


async def _sole_owner(pool: asyncpg.Pool) -> bool:
    owners = await _owners(pool)
    return len(owners) == 1 and sum(owners.values()) == 256 and await _count_is(pool, UNOWNED, 0)


async def _at_least(pool: asyncpg.Pool, n: int) -> bool:
    return await _count(pool, "SELECT count(*) FROM effects") >= n


async def _count_is(pool: asyncpg.Pool, sql: str, expected: int) -> bool:
    return await _count(pool, sql) == expected
