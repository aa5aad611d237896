"""A server crash hands transaction ids out again; the reader must not have passed them.

A transaction that rolled back (or was running) shortly before a crash may leave nothing
of itself in the WAL that reached the disk: crash recovery then hands its id out again.
A reader that read past that id while it was over (nothing more could come from it) must
not take that knowledge across the crash: a new transaction commits events under the
same id, below where the reader had got to. These tests crash a cluster of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event
from dispatch_aio._embedded import EmbeddedPostgres
from dispatch_aio._storage import is_usable

from .crash_helpers import crash, migrated_database, until_up
from .helpers import eventually, locked_payload, uid

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: Ids burnt by rollbacks before each crash: the span recovery may hand out again.
BURNT = 30
#: Crashes tried before the test gives up on the server losing the rollbacks' WAL.
ATTEMPTS = 6


@pytest.fixture(scope="module")
def reuse_server() -> Iterator[EmbeddedPostgres]:
    """A cluster whose WAL writer waits 10 s between writes.

    A rollback's WAL is not flushed by the rollback: the WAL writer or the next commit
    writes it. Waiting long, the writer leaves the rollbacks right before a crash unwritten
    (a commit in between writes them, and the attempt is tried again).
    """
    settings = {"synchronous_commit": "on", "wal_writer_delay": "10s"}
    with EmbeddedPostgres(fsync=False, max_connections=40, settings=settings) as server:
        yield server


@pytest.fixture
async def reuse_dsn(reuse_server: EmbeddedPostgres) -> AsyncIterator[str]:
    async with migrated_database(reuse_server, "reuse") as dsn:
        yield dsn


async def _burn(dsn: str, count: int) -> int:
    """Give ``count`` transactions an id each and roll them back; the snapshot's xmax
    after them (every id below it has ended)."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(count):
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("SELECT pg_current_xact_id()")
            await transaction.rollback()
        xmax: int = await conn.fetchval(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        )
        return xmax
    finally:
        await conn.close()


async def _publish_one(dsn: str) -> tuple[str, int]:
    """Publish one event once the server is back; its id and its transaction's id."""
    conn = await asyncpg.connect(dsn)
    try:
        dispatcher = Dispatcher(None, producer="tests", tenant_id="tnt_tests")
        async with conn.transaction():
            envelope = await dispatcher.publish(
                "credit.locked",
                locked_payload(),
                subject=uid("per"),
                actor="system:tests",
                conn=conn,
            )
            xid: int = await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")
        return envelope.event_id, xid
    finally:
        await conn.close()


@pytest.mark.parametrize("members", [1, 2])
async def test_an_event_committed_under_an_id_handed_out_again_is_handled(
    reuse_dsn: str, members: int
) -> None:
    """One process holding every partition (a cursor per type), and two sharing them (a
    cursor per partition, read again from the lowest with each one's own as its floor)."""
    handled: set[str] = set()
    async with contextlib.AsyncExitStack() as stack:
        consumers = []
        for _ in range(members):
            pool = await asyncpg.create_pool(reuse_dsn, min_size=1, max_size=6)
            stack.push_async_callback(pool.close)
            # A lease long enough that the crash does not cost a process its partitions (a
            # regained partition is read again from its stored cursor: the bug hidden).
            consumer = Consumer(
                pool,
                name="reuse",
                poll_interval=0.2,
                concurrency=4,
                lease_timeout=120,
                commit_timeout=5,
                acquire_timeout=5,
                listen_reconnect_delays=(0.2,),
            )

            @consumer.on("credit.locked")
            async def record(event: Event, conn: asyncpg.Connection) -> None:
                handled.add(event.event_id)

            await stack.enter_async_context(consumer)
            consumers.append(consumer)
        await _leases_shared(reuse_dsn, members)
        reproduced = None
        for _ in range(ATTEMPTS):
            xmax = await _burn(reuse_dsn, BURNT)
            # A read after the rollbacks: the readers have passed their ids (read-only,
            # they write no WAL that would flush theirs).
            for consumer in consumers:
                await consumer.wait_idle()
            await crash(reuse_dsn)
            await until_up(reuse_dsn)
            event_id, xid = await _publish_one(reuse_dsn)
            if xid < xmax:
                reproduced = (event_id, xid, xmax)
                break
            # The rollbacks' WAL reached the disk before the crash: ids not reused.
            await eventually(lambda e=event_id: e in handled, within=30, what="the event")  # type: ignore[misc]
        assert reproduced is not None, f"no id handed out again in {ATTEMPTS} crashes"
        event_id, xid, xmax = reproduced
        await eventually(
            lambda: event_id in handled,
            within=20,
            what=f"the event committed under id {xid}, handed out again (below {xmax})",
        )


async def _leases_shared(dsn: str, members: int) -> None:
    """Until ``members`` processes hold the consumer's 256 partitions between them."""
    conn = await asyncpg.connect(dsn)
    try:

        async def shared() -> bool:
            row = await conn.fetchrow(
                "SELECT count(DISTINCT owner) AS owners, count(owner) AS held"
                " FROM dispatcher_lease WHERE consumer = 'reuse'"
            )
            return bool(row["owners"] == members and row["held"] == 256)

        await eventually(shared, within=30, what=f"{members} members to share the partitions")
    finally:
        await conn.close()


async def _stored(pool: asyncpg.Pool) -> list[tuple[str, int, int]]:
    rows = await pool.fetch(
        "SELECT event_type, last_xid::text::bigint AS x, last_position AS p"
        " FROM dispatcher_cursor WHERE consumer = 'guarded' ORDER BY event_type"
    )
    return [(r["event_type"], r["x"], r["p"]) for r in rows]


@pytest.mark.slow
async def test_no_cursor_is_stored_from_a_lost_read_connection_until_read_again(
    dispatch_pool: asyncpg.Pool,
) -> None:
    """Between losing the read connection and reading again from the stored cursors, what
    the streams passed may be from before a crash: a cursor stored then (by the member
    task's hand-over, or at stop) could pass ids handed out again."""
    handled: list[str] = []
    dispatcher = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_tests")
    consumer = Consumer(
        dispatch_pool,
        name="guarded",
        poll_interval=0.1,
        concurrency=2,
        commit_timeout=5,
        listen_reconnect_delays=(0.1,),
    )

    @consumer.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        handled.append(event.event_id)

    async with consumer:
        reader = consumer._reader
        for _ in range(50):
            envelope = await dispatcher.publish(
                "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
            )
            await eventually(lambda e=envelope.event_id: e in handled, within=10, what="the event")  # type: ignore[misc]
            # Between two reads: the read loop stores nothing while this is held.
            async with reader._conn_lock:
                if not reader._scheduler.marks.moved():
                    continue  # stored already; try with the next event
                conn = reader.connection
                assert conn is not None
                pid = conn.get_server_pid()
                assert await dispatch_pool.fetchval("SELECT pg_terminate_backend($1)", pid)
                await eventually(lambda c=conn: not is_usable(c), within=5, what="the loss seen")
                before = await _stored(dispatch_pool)
                await reader.flush_cursors()  # on a pool connection of its own
                assert await _stored(dispatch_pool) == before
                assert reader._scheduler.marks.moved()  # kept for later
            break
        else:
            pytest.fail("every cursor was stored before the test could hold the read loop")
        # Read again from the stored cursors, the read loop stores cursors again.
        await consumer.wait_idle()
        await eventually(
            lambda: not reader._scheduler.marks.moved(),
            within=10,
            what="the moved cursors stored",
        )
        assert reader.cursors_trusted()
        stored = dict((t, (x, p)) for t, x, p in await _stored(dispatch_pool))
        assert stored["credit.locked"] > dict((t, (x, p)) for t, x, p in before)["credit.locked"]
