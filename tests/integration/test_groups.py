"""Consumer groups (ADR 0006, part B) with worker subprocesses: partitions split between
processes, taken over after kill -9 or a pause past the lease, handed over on SIGTERM;
never an event lost, a handler effect doubled or a subject's order inverted.

No timing assumption decides an outcome: the tests await conditions in the database with
generous limits (a loaded 2-core machine), and the bounds the design promises are
measured on the server's clock, from what the lease tables recorded: a takeover against
the dead member's last heartbeat, a partition's time without an owner from a trigger's
history of owner changes."""

from __future__ import annotations

import asyncio
import os
import signal
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


# Every change of a lease's owner, on the server's clock (clock_timestamp: the moment the
# row changed, not the start of its transaction).
LEASE_HISTORY = """
CREATE TABLE lease_history (partition smallint, owner text, at timestamptz);
CREATE FUNCTION record_lease_owner() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO lease_history VALUES (NEW.partition, NEW.owner, clock_timestamp());
    RETURN NULL;
END
$fn$;
CREATE TRIGGER record_owner AFTER UPDATE ON dispatcher_lease
    FOR EACH ROW WHEN (OLD.owner IS DISTINCT FROM NEW.owner)
    EXECUTE FUNCTION record_lease_owner();
"""

# The longest time a partition was released (owner NULL) before someone took it, among
# releases between $1 and $2: which partition, from whom, to whom.
LONGEST_UNOWNED = """
SELECT extract(epoch FROM taken_at - at)::float8 AS seconds, partition, at, released_by,
       taken_by
FROM (
    SELECT partition, owner, at,
           lag(owner) OVER (PARTITION BY partition ORDER BY at) AS released_by,
           lead(at) OVER (PARTITION BY partition ORDER BY at) AS taken_at,
           lead(owner) OVER (PARTITION BY partition ORDER BY at) AS taken_by
    FROM lease_history
) h
WHERE owner IS NULL AND at BETWEEN $1 AND $2 AND taken_at IS NOT NULL
ORDER BY taken_at - at DESC
LIMIT 1
"""

LIMIT = 60.0  # seconds for any awaited condition: generous, never a measurement


async def _setup(dsn: str) -> tuple[asyncpg.Pool, Dispatcher]:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=6)
    await pool.execute("CREATE TABLE effects (event_id text PRIMARY KEY, seq bigserial)")
    await pool.execute(LEASE_HISTORY)
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
            lambda: _split(pool, 3), within=LIMIT, what=f"three owners: {tail(log)[-500:]}"
        )
        await eventually(
            lambda: _at_least(pool, 600), within=LIMIT, what="the drain to be under way"
        )
        victim = workers.pop(0)
        member = await pool.fetchval(
            "SELECT member_id FROM dispatcher_member WHERE consumer = 'effects' AND pid = $1",
            victim.proc.pid,
        )
        held = {
            r["partition"]
            for r in await pool.fetch(
                "SELECT partition FROM dispatcher_lease WHERE consumer = 'effects' AND owner = $1",
                member,
            )
        }
        await victim.kill()

        async def taken_over() -> bool:
            left = await pool.fetchval(
                "SELECT count(*) FROM dispatcher_lease WHERE consumer = 'effects' AND owner = $1",
                member,
            )
            return left == 0 and await _count_is(pool, UNOWNED, 0)

        # Its partitions are served again, by the survivors.
        await eventually(taken_over, within=LIMIT, what="the takeover")
        # ... within lease_timeout + 1 s of its last heartbeat (so of the kill, which came
        # after it), on the server's clock: the last heartbeat and the takeovers.
        last_heartbeat = await pool.fetchval(
            "SELECT heartbeat_at FROM dispatcher_member WHERE consumer = 'effects'"
            " AND member_id = $1",
            member,
        )
        taken = await pool.fetch(
            "SELECT partition, min(at) AS at FROM lease_history"
            " WHERE owner <> $1 AND at > $2 AND partition = ANY($3::smallint[])"
            " GROUP BY partition",
            member,
            last_heartbeat,
            sorted(held),
        )
        assert {r["partition"] for r in taken} == held
        takeover = max(r["at"] for r in taken) - last_heartbeat
        assert takeover.total_seconds() <= LEASE + 1, takeover
        await eventually(
            lambda: _count_is(
                pool, "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'effects'", total
            ),
            within=LIMIT,
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
        await eventually(lambda: _split(pool, 2), within=LIMIT, what="two owners")
        await eventually(lambda: _at_least(pool, 100), within=LIMIT, what="some effects")
        os.kill(paused.proc.pid, signal.SIGSTOP)
        try:
            # The other one takes every partition once the lease has run out.
            await eventually(lambda: _sole_owner(pool), within=LIMIT, what="the other to take all")
            before = await _count(pool, "SELECT count(*) FROM effects")
        finally:
            os.kill(paused.proc.pid, signal.SIGCONT)
        # Back, it finds its leases gone: its groups in flight are refused by the fence
        # (a duplicate would fail on effects' primary key and end as a dead letter).
        await eventually(lambda: _split(pool, 2), within=LIMIT, what="the paused one to rejoin")
        assert await _count(pool, "SELECT count(*) FROM effects") >= before
        await eventually(
            lambda: _count_is(
                pool, "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'effects'", total
            ),
            within=LIMIT,
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

    async def producer() -> None:
        nonlocal published
        while producing.is_set():
            await _publish(dispatcher, subjects, 20)
            published += 20
            await asyncio.sleep(0.02)

    workers: list[Worker] = []
    try:
        workers = [await Worker.start(dispatch_dsn, log, *args) for _ in range(3)]
        await eventually(lambda: _split(pool, 3), within=LIMIT, what="three owners")
        producing_task = asyncio.create_task(producer())
        began = await pool.fetchval("SELECT clock_timestamp()")
        try:
            for _ in range(3):
                old = workers.pop(0)
                await old.terminate()
                workers.append(await Worker.start(dispatch_dsn, log, *args))
                await eventually(lambda: _split(pool, 3), within=LIMIT, what="three owners")
        finally:
            producing.clear()
            await producing_task
        ended = await pool.fetchval("SELECT clock_timestamp()")
        await eventually(
            lambda: _count_is(
                pool,
                "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'effects'",
                published,
            ),
            within=LIMIT,
            what="everything to finish",
        )
        for worker in workers:
            await worker.terminate()
        workers = []
        await _exactly_once_in_order(pool, published)
        # Every hand-over (SIGTERM, or a share given to a newcomer): from the release to
        # the next owner's acquisition, on the server's clock.
        longest = await pool.fetchrow(LONGEST_UNOWNED, began, ended)
        assert longest is None or longest["seconds"] <= 1.0, dict(longest)
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
