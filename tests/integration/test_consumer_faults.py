"""The consumer under faults: lost and half-open LISTEN connections, poison handlers,
malformed rows, stopping with handlers in flight, and misuse (DESIGN.md invariants 6-8)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import pytest

from dispatch_aio import (
    Consumer,
    ConsumerState,
    Dispatcher,
    Event,
    HorizonError,
    LifecycleError,
    SchemaNotMigratedError,
    UnknownEventTypeError,
    migrate,
)
from dispatch_aio.pytest_plugin import TestPostgres

from .helpers import eventually, locked_payload, uid
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.anyio


async def publish(dispatcher: Dispatcher, **payload: object) -> str:
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(**payload), subject=uid("per"), actor="system:tests"
    )
    return envelope.event_id


# -- the LISTEN connection -----------------------------------------------------------


async def test_listen_connection_terminated_by_server_reconnects_and_catches_up(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_dsn: str
) -> None:
    listen_conns: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(dispatch_dsn)
        listen_conns.append(conn)
        return conn

    delivered: set[str] = set()
    # Polling is slow on purpose: only the listener (and its catch-up read) is fast.
    consumer = Consumer(
        dispatch_pool,
        name="listening",
        poll_interval=60,
        listen_reconnect_delays=(0.2,),
        listen_connect=connect,
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        delivered.add(event.event_id)

    async with consumer:
        listener = consumer.listener
        assert listener is not None
        assert listener.connected
        first = await publish(dispatcher)
        await eventually(lambda: first in delivered, within=5, what="a notified event")

        old_pid = listen_conns[-1].get_server_pid()
        assert await dispatch_pool.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        # Published while the listener is down: its notification is lost for good.
        missed = await publish(dispatcher)
        await eventually(
            lambda: listener.reconnects >= 1 and listener.connected,
            within=5,
            what="the listener to reconnect",
        )
        assert len(listen_conns) == 2
        # The catch-up read after reconnecting finds it (the poll is a minute away).
        await eventually(lambda: missed in delivered, within=5, what="the catch-up read")
        after = await publish(dispatcher)
        await eventually(lambda: after in delivered, within=5, what="a notification again")
        assert listener.reconnects == 1
        alive = await dispatch_pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", old_pid
        )
        assert alive == 0
    assert delivered == {first, missed, after}


async def test_polling_alone_delivers_everything_without_the_trigger(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await migrate(dispatch_pool, notify=False)
    triggers = await dispatch_pool.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'dispatcher_event_notify'"
    )
    assert triggers == 0
    delivered: set[str] = set()
    consumer = Consumer(dispatch_pool, name="polling", listen=False, poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        delivered.add(event.event_id)

    async with consumer:
        assert consumer.listener is None
        published = set()
        for _ in range(10):
            published.update(
                e.event_id
                for e in await dispatcher.publish_many(
                    [
                        {
                            "event_type": "credit.locked",
                            "payload": locked_payload(),
                            "subject": uid("per"),
                            "actor": "system:tests",
                        }
                        for _ in range(5)
                    ]
                )
            )
        await eventually(lambda: delivered == published, within=10, what="polling to deliver")
    assert len(published) == 50


def _upstream(postgres: TestPostgres) -> dict[str, object]:
    """Where the proxy forwards to: the embedded server's unix socket, or the DSN's host."""
    if postgres.embedded is not None:
        embedded = postgres.embedded
        return {"unix_path": Path(embedded.socket_dir) / f".s.PGSQL.{embedded.port}"}
    parts = urlsplit(postgres.server_dsn)
    query = parse_qs(parts.query)
    host = unquote(query["host"][0]) if "host" in query else (parts.hostname or "localhost")
    port = int(query["port"][0]) if "port" in query else (parts.port or 5432)
    if host.startswith("/"):
        return {"unix_path": Path(host) / f".s.PGSQL.{port}"}
    return {"host": host, "port": port}


async def test_half_open_listen_socket_is_detected_and_replaced(
    dispatch_postgres: TestPostgres,
    dispatch_pool: asyncpg.Pool,
    dispatcher: Dispatcher,
    dispatch_dsn: str,
) -> None:
    started = time.monotonic()
    delivered: set[str] = set()
    async with TcpProxy(**_upstream(dispatch_postgres)) as proxy:  # type: ignore[arg-type]

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(**proxy.connect_args(dispatch_dsn))

        consumer = Consumer(
            dispatch_pool,
            name="half-open",
            poll_interval=60,
            heartbeat_interval=0.3,
            heartbeat_timeout=0.3,
            listen_reconnect_delays=(0.5,),
            listen_connect=connect,
        )

        @consumer.on("credit.locked")
        async def on_locked(event: Event) -> None:
            delivered.add(event.event_id)

        async with consumer:
            listener = consumer.listener
            assert listener is not None
            assert listener.connected
            first = await publish(dispatcher)
            await eventually(lambda: first in delivered, within=5, what="a notified event")

            proxy.blackhole()
            cut = time.monotonic()
            # Its notification goes into the black hole: the socket stays open, silent.
            missed = await publish(dispatcher)
            await eventually(
                lambda: not listener.connected, within=3, what="the heartbeat to notice"
            )
            noticed = time.monotonic() - cut
            assert proxy.dropped_bytes > 0
            proxy.restore()
            await eventually(
                lambda: listener.connected and listener.reconnects >= 1,
                within=5,
                what="a new listen connection",
            )
            await eventually(lambda: missed in delivered, within=3, what="the catch-up read")
            after = await publish(dispatcher)
            await eventually(lambda: after in delivered, within=3, what="a notification again")
        assert proxy.accepted >= 2
    # heartbeat_interval + heartbeat_timeout, plus scheduling slack.
    assert noticed < 0.6 + 0.5
    assert delivered == {first, missed, after}
    assert time.monotonic() - started < 10


# -- poison handler ------------------------------------------------------------------


async def test_poison_event_retried_with_backoff_then_dead_lettered(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    delays = (0.1, 0.2, 0.3)
    jitter, slack = 0.3, 0.15
    await dispatch_pool.execute("CREATE TABLE writes (event_id text, attempt int)")
    poison_subject = uid("per")
    attempts: list[float] = []
    handled_at_last_attempt: list[int] = []
    consumer = Consumer(
        dispatch_pool,
        name="poison",
        concurrency=4,
        poll_interval=0.05,
        retry_delays=delays,
        retry_jitter=jitter,
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        if event.subject == poison_subject:
            attempts.append(time.monotonic())
            if len(attempts) == 1 + len(delays):
                handled_at_last_attempt.append(consumer.stats.handled)
        await conn.execute("INSERT INTO writes VALUES ($1, $2)", event.event_id, event.attempt)
        if event.subject == poison_subject:
            raise ValueError(f"cannot handle {event.event_id}")

    poison = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=poison_subject, actor="system:tests"
    )
    others = {await publish(dispatcher) for _ in range(20)}
    async with consumer:
        await eventually(lambda: len(attempts) >= 1, within=5, what="the first attempt")
        # Published after the poison failed once: they must not wait for its retries.
        others |= {await publish(dispatcher) for _ in range(20)}
        await eventually(
            lambda: consumer.stats.dead_lettered == 1, within=10, what="the dead letter"
        )
        await asyncio.wait_for(consumer.wait_idle(), 10)
        stats = consumer.stats

    assert len(attempts) == 1 + len(delays)
    for delay, (a, b) in zip(delays, itertools.pairwise(attempts), strict=True):
        gap = b - a
        assert delay <= gap <= delay * (1 + jitter) + slack, (delay, gap)
    assert handled_at_last_attempt == [len(others)]
    assert stats.retried == len(delays)
    assert stats.handled == len(others)

    letter = await dispatch_pool.fetchrow(
        "SELECT * FROM dispatcher_dead_letter WHERE consumer = 'poison'"
    )
    assert letter is not None
    assert letter["event_id"] == poison.event_id
    assert letter["attempts"] == 1 + len(delays)
    assert letter["error_type"] == "ValueError"
    assert letter["error_message"] == f"cannot handle {poison.event_id}"
    assert 'raise ValueError(f"cannot handle' in letter["error_traceback"]
    assert json.loads(letter["envelope"])["event_id"] == poison.event_id
    assert await dispatch_pool.fetchval("SELECT count(*) FROM dispatcher_dead_letter") == 1
    outcome = await dispatch_pool.fetchval(
        "SELECT outcome FROM dispatcher_dedup WHERE consumer = 'poison' AND event_id = $1",
        poison.event_id,
    )
    assert outcome == "dead_lettered"
    # Every failed attempt's write was rolled back with it.
    written = {r["event_id"] for r in await dispatch_pool.fetch("SELECT event_id FROM writes")}
    assert written == others


# -- malformed rows ------------------------------------------------------------------

RAW_INSERT = """
INSERT INTO dispatcher_event (
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, payload, xid, position
) VALUES ($1, 'credit.locked', $2, 'tnt_tests', 'tests', $3, 'system:tests', now(),
          $4::jsonb, '0', 0)
"""


async def test_malformed_rows_are_dead_lettered_at_once(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    depth = 1000
    deep = '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)
    bad = {
        uid("evt"): (99, json.dumps(locked_payload())),  # unknown schema version
        uid("evt"): (1, json.dumps(locked_payload(locked_credits="two"))),  # fails its schema
        uid("evt"): (1, deep),  # deeper than Python's json parses
    }
    good: set[str] = set()
    async with dispatch_pool.acquire() as conn, conn.transaction():
        for bad_id, (version, payload) in bad.items():
            for _ in range(3):
                good_id = uid("evt")
                good.add(good_id)
                await conn.execute(RAW_INSERT, good_id, 1, uid("per"), json.dumps(locked_payload()))
            await conn.execute(RAW_INSERT, bad_id, version, uid("per"), payload)
    stored_depth = await dispatch_pool.fetchval(
        "SELECT length(payload::text) FROM dispatcher_event WHERE event_id = $1", list(bad)[2]
    )
    assert stored_depth >= 2 * depth

    calls: list[str] = []
    consumer = Consumer(dispatch_pool, name="malformed", batch_size=50, poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        calls.append(event.event_id)

    async with consumer:
        await asyncio.wait_for(consumer.wait_idle(), 10)
        assert consumer.stats.fetches >= 1
        assert consumer.state is ConsumerState.RUNNING
        # Still up: a new event after them is handled.
        later = await publish(dispatcher)
        await asyncio.wait_for(consumer.wait_idle(), 10)
        stats = consumer.stats

    assert sorted(calls) == sorted([*good, later])
    assert stats.dead_lettered == 3
    assert stats.retried == 0
    letters = {
        r["event_id"]: r
        for r in await dispatch_pool.fetch(
            "SELECT * FROM dispatcher_dead_letter WHERE consumer = 'malformed'"
        )
    }
    assert set(letters) == set(bad)
    assert all(r["attempts"] == 0 for r in letters.values())
    unknown_version, invalid, too_deep = (letters[k] for k in bad)
    assert unknown_version["error_type"] == "UnknownSchemaVersionError"
    assert invalid["error_type"] == "InvalidPayloadError"
    assert "locked_credits" in invalid["error_message"]
    assert too_deep["error_type"] == "RecursionError"
    outcomes = await dispatch_pool.fetch(
        "SELECT outcome, count(*) FROM dispatcher_dedup WHERE consumer = 'malformed' "
        "GROUP BY outcome ORDER BY outcome"
    )
    assert [tuple(r) for r in outcomes] == [("dead_lettered", 3), ("handled", len(good) + 1)]


# -- stopping ------------------------------------------------------------------------


async def test_stop_drains_in_flight_handlers(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await dispatch_pool.execute("CREATE TABLE drained (event_id text PRIMARY KEY)")
    entered, release = asyncio.Event(), asyncio.Event()
    consumer = Consumer(dispatch_pool, name="drain", drain_timeout=10, poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO drained VALUES ($1)", event.event_id)
        entered.set()
        await release.wait()

    first = await publish(dispatcher)
    await consumer.start()
    try:
        await asyncio.wait_for(entered.wait(), 10)
        consumer.stop()
        assert consumer.state is ConsumerState.DRAINING
        # Nothing new starts once stopping.
        second = await publish(dispatcher)
        finished = asyncio.ensure_future(consumer.wait())
        done, _ = await asyncio.wait({finished}, timeout=0.2)
        assert not done, "stop() must wait for the handler in flight"
        release.set()
        await asyncio.wait_for(finished, 10)
    finally:
        release.set()
        await consumer.aclose()
    assert consumer.state is ConsumerState.CLOSED
    assert consumer.stats.handled == 1
    rows = {r["event_id"] for r in await dispatch_pool.fetch("SELECT event_id FROM drained")}
    assert rows == {first}
    marked = await dispatch_pool.fetch("SELECT event_id FROM dispatcher_dedup")
    assert [r["event_id"] for r in marked] == [first]
    assert second not in rows


async def test_hung_handler_is_cancelled_at_drain_timeout_and_runs_again_later(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await dispatch_pool.execute("CREATE TABLE effects (event_id text, handler text)")
    entered = asyncio.Event()
    cancelled: list[str] = []
    drain_timeout = 0.3
    hung = Consumer(dispatch_pool, name="hung", drain_timeout=drain_timeout, poll_interval=0.05)

    @hung.on("credit.locked")
    async def hang(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1, 'hung')", event.event_id)
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(event.event_id)
            raise

    event_id = await publish(dispatcher)
    async with hung:
        await asyncio.wait_for(entered.wait(), 10)
        stopping = time.monotonic()
        hung.stop()
        await asyncio.wait_for(hung.wait(), 10)
        took = time.monotonic() - stopping
    assert drain_timeout <= took < drain_timeout + 3
    assert cancelled == [event_id]
    assert hung.stats.handled == 0
    assert await dispatch_pool.fetchval("SELECT count(*) FROM effects") == 0
    assert await dispatch_pool.fetchval("SELECT count(*) FROM dispatcher_dedup") == 0
    cursor = await dispatch_pool.fetchval(
        "SELECT last_position FROM dispatcher_cursor WHERE consumer = 'hung'"
    )
    assert cursor == 0

    later = Consumer(dispatch_pool, name="hung", poll_interval=0.05)

    @later.on("credit.locked")
    async def handle(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1, 'later')", event.event_id)

    async with later:
        await asyncio.wait_for(later.wait_idle(), 10)
    rows = [tuple(r) for r in await dispatch_pool.fetch("SELECT * FROM effects")]
    assert rows == [(event_id, "later")]


async def test_nothing_leaks_after_aclose(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    before = asyncio.all_tasks()
    consumer = Consumer(dispatch_pool, name="leaks", poll_interval=0.05, concurrency=4)

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT 1")

    async with consumer:
        for _ in range(10):
            await publish(dispatcher)
        await asyncio.wait_for(consumer.wait_idle(), 10)
        listening = await dispatch_pool.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
        )
        assert len(listening) == 1
        assert len(asyncio.all_tasks() - before) > 1
    await consumer.aclose()  # idempotent

    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == []
    assert dispatch_pool.get_idle_size() == dispatch_pool.get_size()
    listen_pid = listening[0]["pid"]

    async def listener_gone() -> bool:
        count = await dispatch_pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", listen_pid
        )
        return bool(count == 0)

    await eventually(listener_gone, within=5, what="the LISTEN backend to exit")
    assert consumer.stats.handled == 10


# -- misuse --------------------------------------------------------------------------


async def test_starting_twice_is_refused(dispatch_pool: asyncpg.Pool) -> None:
    consumer = Consumer(dispatch_pool, name="twice", poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        pass

    async with consumer:
        with pytest.raises(LifecycleError, match="make a new one"):
            await consumer.start()
        with pytest.raises(LifecycleError):
            consumer.on("credit.reserved")
    with pytest.raises(LifecycleError):
        await consumer.start()


def test_subscribing_an_unknown_event_type_is_refused() -> None:
    with pytest.raises(UnknownEventTypeError, match=r"credit\.vanished"):
        Consumer(_NoPool(), name="unknown").on("credit.vanished")  # type: ignore[arg-type]


class _NoPool:
    """Registration needs no database."""


@pytest.fixture
async def unmigrated_pool(dispatch_postgres: TestPostgres) -> AsyncIterator[asyncpg.Pool]:
    name = await dispatch_postgres.create_database(migrated=False)
    pool = await asyncpg.create_pool(dispatch_postgres.dsn(name), min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()
        await dispatch_postgres.drop_database(name)


async def test_unmigrated_schema_is_refused_naming_the_command(
    unmigrated_pool: asyncpg.Pool,
) -> None:
    consumer = Consumer(unmigrated_pool, name="early", poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        pass

    with pytest.raises(SchemaNotMigratedError, match="dispatch-aio migrate"):
        await consumer.start()
    assert consumer.state is ConsumerState.CLOSED
    assert unmigrated_pool.get_idle_size() == unmigrated_pool.get_size()


async def test_cursor_above_the_cluster_horizon_is_refused(dispatch_pool: asyncpg.Pool) -> None:
    await dispatch_pool.execute(
        "INSERT INTO dispatcher_cursor (consumer, event_type, last_xid) "
        "VALUES ('restored', 'credit.locked', '999999999999')"
    )
    consumer = Consumer(dispatch_pool, name="restored", poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        pass

    with pytest.raises(HorizonError, match="999999999999"):
        await consumer.start()
    assert consumer.state is ConsumerState.CLOSED


async def test_event_above_the_cluster_horizon_is_refused(dispatch_pool: asyncpg.Pool) -> None:
    async with dispatch_pool.acquire() as conn, conn.transaction():
        # Rows of a logical restore keep the xids of the cluster they came from.
        await conn.execute(
            "ALTER TABLE dispatcher_event DISABLE TRIGGER dispatcher_event_before_insert"
        )
        await conn.execute(
            RAW_INSERT.replace("'0', 0)", "'999999999999', 1)"),
            uid("evt"),
            1,
            uid("per"),
            json.dumps(locked_payload()),
        )
        await conn.execute(
            "ALTER TABLE dispatcher_event ENABLE TRIGGER dispatcher_event_before_insert"
        )
    consumer = Consumer(dispatch_pool, name="fresh", poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        pass

    with pytest.raises(HorizonError, match="restored"):
        await consumer.start()
    assert consumer.state is ConsumerState.CLOSED
    cursors = await dispatch_pool.fetchval("SELECT count(*) FROM dispatcher_cursor")
    assert cursors == 0
