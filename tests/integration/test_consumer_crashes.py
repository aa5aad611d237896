"""The consumer against a server that crashes and connections that are cut.

A SIGKILLed backend makes the postmaster end every connection and run crash recovery;
``pg_terminate_backend`` ends one connection. Either way the consumer reconnects, runs
the affected work again without counting attempts, and every event ends with exactly one
effect. These tests crash a cluster of their own, never the session's shared server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio import Consumer, ConsumerState, Dispatcher, Event
from dispatch_aio._embedded import EmbeddedPostgres
from dispatch_aio._storage import is_usable

from .crash_helpers import crash, migrated_database, until_up
from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio

WORKER_MODULE = textwrap.dedent(
    """
    import asyncio
    import random

    import asyncpg
    from dispatch_aio import Consumer, Event

    def make(pool):
        consumer = Consumer(
            pool, name="crashproof", poll_interval=0.2, concurrency=4, batch_size=20,
            max_group=8, retry_delays=(0.05, 0.1), commit_timeout=5, acquire_timeout=5,
            listen_reconnect_delays=(0.2,),
        )

        @consumer.on("credit.locked")
        async def record(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO effects (event_id) VALUES ($1)", event.event_id)
            await asyncio.sleep(random.uniform(0, 0.01))

        return consumer
    """
)


@pytest.fixture(scope="module")
def crash_server() -> Iterator[EmbeddedPostgres]:
    """A cluster of this module's own, that the tests may crash."""
    # A commit must survive a crash-restart: synchronous_commit stays on (fsync off only
    # risks an operating-system crash, which these tests do not cause).
    settings = {"synchronous_commit": "on"}
    with EmbeddedPostgres(fsync=False, max_connections=60, settings=settings) as server:
        yield server


@pytest.fixture
async def crash_dsn(crash_server: EmbeddedPostgres) -> AsyncIterator[str]:
    async with migrated_database(
        crash_server, "crash", "CREATE TABLE effects (event_id text NOT NULL)"
    ) as dsn:
        yield dsn


async def _publisher(dsn: str, published: list[str], stop: asyncio.Event) -> None:
    """Publish until told to stop, riding out the crashes (a failed publish is retried)."""
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
    try:
        while not stop.is_set():
            try:
                envelope = await dispatcher.publish(
                    "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
                )
                published.append(envelope.event_id)
            except Exception:  # the server is down: try again shortly
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)
    finally:
        pool.terminate()


async def _effects_once(dsn: str) -> tuple[int, int, int]:
    """(events, distinct effects, effects) in the database."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM dispatcher_event) AS events, "
            "(SELECT count(DISTINCT event_id) FROM effects) AS distinct_effects, "
            "(SELECT count(*) FROM effects) AS effects"
        )
        return row["events"], row["distinct_effects"], row["effects"]
    finally:
        await conn.close()


@pytest.mark.slow
async def test_worker_process_survives_five_crash_restarts(
    crash_server: EmbeddedPostgres, crash_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "crashproof_worker.py").write_text(WORKER_MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log = tmp_path / "worker.log"
    log_file = log.open("wb")
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatch_aio.cli",
        "--dsn",
        crash_dsn,
        "worker",
        "crashproof_worker:make",
        "--pool-size",
        "6",
        "--log-level",
        "WARNING",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_file,  # a file, not a pipe: nobody reads it while it runs
    )
    published: list[str] = []
    stop = asyncio.Event()
    producer = asyncio.ensure_future(_publisher(crash_dsn, published, stop))
    try:
        for number in range(5):
            seen = len(published)
            await eventually(
                lambda seen=seen: len(published) >= seen + 20,  # type: ignore[misc]
                within=30,
                what=f"the producer to publish before crash {number + 1}",
            )

            async def handled_some() -> bool:
                try:
                    _, distinct, _ = await _effects_once(crash_dsn)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    return False
                return distinct > 0

            # The first time includes the worker's start-up (slow on a loaded machine).
            within = 90 if number == 0 else 30
            await eventually(handled_some, within=within, what="the worker to handle events")
            await crash(crash_dsn)
            await until_up(crash_dsn)
            assert worker.returncode is None, log.read_text()[-4000:]
        stop.set()
        await producer

        counts: list[tuple[int, int, int]] = []

        async def all_handled_once() -> bool:
            counts.append(await _effects_once(crash_dsn))
            events, distinct, effects = counts[-1]
            return events == distinct == effects and events > 0

        try:
            await eventually(all_handled_once, within=30, what="each event handled once")
        finally:
            # (events, distinct effects, effects): duplicates or losses show here.
            print("events, distinct effects, effects:", counts[-1:])
        assert worker.returncode is None
    finally:
        stop.set()
        await asyncio.gather(producer, return_exceptions=True)
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.wait(), 30)
        except TimeoutError:
            worker.kill()
            await worker.wait()
        log_file.close()
    assert worker.returncode == 0, log.read_text()[-4000:]


# -- pg_terminate_backend of each connection the consumer holds ----------------------


async def _pids_running(pool: asyncpg.Pool, like: str, *, active: bool = False) -> list[int]:
    """Backends whose last statement is like ``like`` (``active``: still running it)."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND query LIKE $1 AND (NOT $2 OR state = 'active')",
        like,
        active,
    )
    return [r["pid"] for r in rows]


async def _terminate(pool: asyncpg.Pool, pid: int) -> None:
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)


async def _exactly_once(pool: asyncpg.Pool) -> None:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM dispatcher_event) AS events, "
        "(SELECT count(DISTINCT event_id) FROM effects) AS distinct_effects, "
        "(SELECT count(*) FROM effects) AS effects"
    )
    assert row["events"] == row["distinct_effects"] == row["effects"], dict(row)


@pytest.fixture
async def effects_pool(dispatch_pool: asyncpg.Pool) -> asyncpg.Pool:
    await dispatch_pool.execute("CREATE TABLE effects (event_id text NOT NULL)")
    return dispatch_pool


async def _publish(dispatcher: Dispatcher, n: int = 1) -> list[str]:
    return [
        (
            await dispatcher.publish(
                "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
            )
        ).event_id
        for _ in range(n)
    ]


def _consumer(pool: asyncpg.Pool, **options: object) -> Consumer:
    options = {
        "name": "terminated",
        "poll_interval": 0.1,
        "concurrency": 2,
        "retry_delays": (0.05,),
        "listen_reconnect_delays": (0.1,),
        "commit_timeout": 5,
        **options,
    }
    return Consumer(pool, **options)  # type: ignore[arg-type]


async def test_terminating_the_listen_connection_of_the_pool_keeps_delivering(
    effects_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    consumer = _consumer(effects_pool, poll_interval=30)

    @consumer.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)

    async with consumer:
        await _publish(dispatcher)
        await asyncio.wait_for(consumer.wait_idle(), 10)
        [pid] = await _pids_running(effects_pool, "LISTEN %")
        await _terminate(effects_pool, pid)
        listener = consumer.listener
        assert listener is not None
        await eventually(
            lambda: listener.reconnects >= 1 and listener.connected,
            within=10,
            what="the listener to reconnect",
        )
        await _publish(dispatcher, 3)
        await asyncio.wait_for(consumer.wait_idle(), 10)
        assert consumer.state is ConsumerState.RUNNING
    await _exactly_once(effects_pool)
    assert consumer.stats.handled == 4


@pytest.mark.parametrize("seen_closed", [False, True], ids=["at-once", "seen-closed"])
async def test_terminating_the_fetcher_connection_keeps_delivering(
    effects_pool: asyncpg.Pool,
    dispatcher: Dispatcher,
    caplog: pytest.LogCaptureFixture,
    seen_closed: bool,
) -> None:
    """At once: the next read may be under way when the connection ends. Seen closed
    first: the connection is replaced before a read fails on it (no backoff, no warning)."""
    consumer = _consumer(effects_pool)

    @consumer.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)

    async with consumer:
        await _publish(dispatcher)
        await asyncio.wait_for(consumer.wait_idle(), 10)
        # The read ends with its transaction's COMMIT, a statement the workers send too:
        # find the reading backend by the connection the read loop holds.
        reading = consumer._reader.connection
        assert reading is not None
        await _terminate(effects_pool, reading.get_server_pid())
        if seen_closed:
            await eventually(lambda: not is_usable(reading), within=10, what="it closed")
            caplog.clear()
        await _publish(dispatcher, 3)
        await asyncio.wait_for(consumer.wait_idle(), 10)
        assert consumer.state is ConsumerState.RUNNING
    await _exactly_once(effects_pool)
    assert consumer.stats.handled == 4
    assert consumer.stats.retried == 0
    if seen_closed:
        assert consumer.stats.reconnects == 1
        failed = [r.getMessage() for r in caplog.records if "fetch failed" in r.getMessage()]
        assert failed == []


async def test_terminating_a_worker_connection_mid_handler_runs_the_event_again(
    effects_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    entered, go_on = asyncio.Event(), asyncio.Event()
    pids: list[int] = []
    consumer = _consumer(effects_pool, retry_delays=())

    @consumer.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)
        if not pids:
            pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
            entered.set()
            await go_on.wait()
            await conn.execute("SELECT 1")  # the connection is gone by now

    async with consumer:
        await _publish(dispatcher)
        await asyncio.wait_for(entered.wait(), 10)
        await _terminate(effects_pool, pids[0])
        go_on.set()
        await asyncio.wait_for(consumer.wait_idle(), 10)
        assert consumer.state is ConsumerState.RUNNING
    await _exactly_once(effects_pool)
    # Not the event's fault: no attempt counted (retry_delays=() would dead-letter it).
    assert consumer.stats.handled == 1
    assert consumer.stats.dead_lettered == 0
    assert await effects_pool.fetchval("SELECT count(*) FROM dispatcher_dead_letter") == 0


async def test_terminating_an_idle_worker_connection_keeps_delivering(
    effects_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    pids: set[int] = set()
    consumer = _consumer(effects_pool, concurrency=1)

    @consumer.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
        await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)

    async with consumer:
        await _publish(dispatcher)
        await asyncio.wait_for(consumer.wait_idle(), 10)
        # The worker keeps its connection for a moment after a group: cut it there.
        for pid in pids:
            await _terminate(effects_pool, pid)
        await _publish(dispatcher, 3)
        await asyncio.wait_for(consumer.wait_idle(), 10)
        assert consumer.state is ConsumerState.RUNNING
    await _exactly_once(effects_pool)
    assert consumer.stats.handled == 4
    assert consumer.stats.retried == 0


async def test_terminating_a_worker_connection_during_the_outcome_commit(
    effects_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    # A deferred trigger runs at COMMIT: the first commit stalls there and is cut.
    await effects_pool.execute(
        """
        CREATE SEQUENCE stall;  -- nextval is not rolled back with the cut commit
        CREATE FUNCTION stall_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('stall') = 1 THEN
                PERFORM pg_sleep(30);
            END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER stall_commit AFTER INSERT ON effects
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stall_commit();
        """
    )
    consumer = _consumer(effects_pool, retry_delays=())

    @consumer.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)

    async with consumer:
        await _publish(dispatcher)

        async def committing() -> list[int]:
            # The stalled one: asleep in the trigger. Other COMMITs (the read loop's cursor
            # store) may be active for a moment too; cutting one of those instead left the
            # stalled commit running for its 30 s.
            rows = await effects_pool.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'COMMIT%' AND state = 'active' AND wait_event = 'PgSleep'"
            )
            return [r["pid"] for r in rows]

        await eventually(committing, within=10, what="a commit to stall")
        for pid in await committing():
            await _terminate(effects_pool, pid)
        await asyncio.wait_for(consumer.wait_idle(), 20)
        assert consumer.state is ConsumerState.RUNNING
    await _exactly_once(effects_pool)
    assert consumer.stats.handled == 1
    assert consumer.stats.dead_lettered == 0


BUGGY_MODULE = textwrap.dedent(
    """
    from dispatch_aio import Consumer, Event, Registry

    class BrokenRegistry:
        def __init__(self):
            self._registry = Registry.load()

        def __getattr__(self, name):
            return getattr(self._registry, name)

        def validate_payload(self, *args, **kwargs):
            raise KeyError("a bug in validation")

        # No digest of its own: it checks every payload (ADR 0007), and so meets its bug.
        payload_digests = {}

    def make(pool):
        consumer = Consumer(pool, name="buggy", poll_interval=0.1, registry=BrokenRegistry())

        @consumer.on("credit.locked")
        async def record(event: Event) -> None:
            pass

        return consumer
    """
)


async def test_worker_process_exits_non_zero_on_a_bug_in_the_consumer(
    dispatch_dsn: str, dispatcher: Dispatcher, tmp_path: Path
) -> None:
    (tmp_path / "buggy_worker.py").write_text(BUGGY_MODULE)
    await _publish(dispatcher)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatch_aio.cli",
        "--dsn",
        dispatch_dsn,
        "worker",
        "buggy_worker:make",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(worker.communicate(), 60)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 1, err.decode()
    assert "KeyError" in err.decode()
