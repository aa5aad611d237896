"""A connection that dies mid-protocol raises asyncpg's ``InternalClientError``.

When the server ends a session (``pg_terminate_backend``, an admin shutdown, a crash)
it sends a FATAL error and then closes the socket. If the client reads the error
before it sees the close and starts its next call in between, asyncpg's protocol is
left in an error-consuming state and the call raises ``InternalClientError: cannot
switch to state ...; another operation is in progress`` instead of ``InterfaceError``.
In production that window is short and the failure rare; the proxy here holds the
window open so that every connection of the consumer (pool workers, fetcher and the
LISTEN connection's heartbeat) meets it at once, and the consumer must treat it as the
infrastructure failure it is: throw the connection away, reconnect, count no attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dispatch_aio import Consumer, ConsumerState, DeadLetters, Dispatcher, Event
from dispatch_aio.pytest_plugin import TestPostgres

from .helpers import eventually, locked_payload, uid
from .tcp_proxy import TcpProxy
from .test_consumer_faults import _upstream

pytestmark = pytest.mark.anyio


async def test_the_forged_termination_makes_asyncpg_raise_internal_client_error(
    dispatch_postgres: TestPostgres, dispatch_dsn: str
) -> None:
    """The fault the next test injects is the one the consumer must classify."""
    async with TcpProxy(**_upstream(dispatch_postgres)) as proxy:  # type: ignore[arg-type]
        conn = await asyncpg.connect(**proxy.connect_args(dispatch_dsn))
        try:
            assert await conn.fetchval("SELECT 1") == 1
            assert proxy.forge_termination(close_after=30) == 1
            # Let the client read the forged error; its socket stays open.
            await asyncio.sleep(0.05)
            with pytest.raises(asyncpg.exceptions.InternalClientError, match="cannot switch"):
                await conn.fetchval("SELECT 1", timeout=5)
        finally:
            conn.terminate()


async def test_consumer_recovers_when_every_connection_raises_internal_client_error(
    dispatch_postgres: TestPostgres,
    dispatch_pool: asyncpg.Pool,
    dispatcher: Dispatcher,
    dispatch_dsn: str,
) -> None:
    effects: collections.Counter[str] = collections.Counter()
    published: list[str] = []

    async def publish(n: int) -> None:
        for _ in range(n):
            envelope = await dispatcher.publish(
                "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
            )
            published.append(envelope.event_id)

    await dispatch_pool.execute(
        "CREATE TABLE IF NOT EXISTS protocol_fault_effects (event_id text PRIMARY KEY)"
    )
    async with TcpProxy(**_upstream(dispatch_postgres)) as proxy:  # type: ignore[arg-type]
        connect_args = proxy.connect_args(dispatch_dsn)

        async def listen_connect() -> asyncpg.Connection:
            return await asyncpg.connect(**connect_args)

        async with asyncpg.create_pool(min_size=4, max_size=4, **connect_args) as pool:
            consumer = Consumer(
                pool,
                name="protocol-faults",
                concurrency=2,
                poll_interval=0.5,
                heartbeat_interval=0.2,
                heartbeat_timeout=1.0,
                listen_reconnect_delays=(0.1,),
                listen_connect=listen_connect,
                retry_delays=(30.0,),
            )

            @consumer.on("credit.locked")
            async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
                await conn.execute(
                    "INSERT INTO protocol_fault_effects (event_id) VALUES ($1)", event.event_id
                )
                effects[event.event_id] += 1

            async with consumer:
                listener = consumer.listener
                assert listener is not None
                await publish(10)
                await eventually(
                    lambda: set(published) <= set(effects), within=10, what="the first events"
                )
                hit = proxy.forge_termination(close_after=1.0)
                # Four pool connections and the LISTEN connection, all idle now.
                assert hit >= 5
                await publish(20)
                await eventually(
                    lambda: set(published) <= set(effects),
                    within=20,
                    what="delivery after every connection went bad",
                )
                await eventually(
                    lambda: listener.reconnects >= 1 and listener.connected,
                    within=10,
                    what="a new LISTEN connection after the heartbeat failed",
                )
                assert consumer.state is ConsumerState.RUNNING
                await publish(5)
                await eventually(
                    lambda: set(published) <= set(effects), within=10, what="delivery again"
                )
                await asyncio.wait_for(consumer.wait_idle(), timeout=10)
            assert consumer.state is ConsumerState.CLOSED
        # Fresh links were opened to replace the poisoned ones.
        assert proxy.accepted > hit + 1

    assert len(published) == 35
    # Handler effects that committed: each event exactly once, none of them retried
    # as the event's own failure (no attempt row, no dead letter).
    committed = await dispatch_pool.fetch("SELECT event_id FROM protocol_fault_effects")
    assert sorted(r["event_id"] for r in committed) == sorted(published)
    attempts = await dispatch_pool.fetchval(
        "SELECT count(*) FROM dispatcher_attempt WHERE consumer = 'protocol-faults'"
    )
    dead = await dispatch_pool.fetchval(
        "SELECT count(*) FROM dispatcher_dead_letter WHERE consumer = 'protocol-faults'"
    )
    assert (attempts, dead) == (0, 0)


async def test_a_read_lost_in_a_half_open_connection_is_abandoned_and_retried(
    dispatch_postgres: TestPostgres,
    dispatch_pool: asyncpg.Pool,
    dispatcher: Dispatcher,
    dispatch_dsn: str,
) -> None:
    """A fetch whose request vanished (a network partition, a dead NAT entry) gets no
    answer, ever: the read is bounded by ``commit_timeout``, the connection thrown away."""
    delivered: set[str] = set()

    async def publish() -> str:
        envelope = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
        )
        return envelope.event_id

    async def listen_connect() -> asyncpg.Connection:
        # Notifications arrive directly: only the pool's connections cross the proxy.
        return await asyncpg.connect(dispatch_dsn)

    async with (
        TcpProxy(**_upstream(dispatch_postgres)) as proxy,  # type: ignore[arg-type]
        _pool_through(proxy, dispatch_dsn) as pool,
    ):
        consumer = Consumer(
            pool,
            name="half-open-fetch",
            concurrency=1,
            poll_interval=60,
            commit_timeout=1.0,
            listen_connect=listen_connect,
        )

        @consumer.on("credit.locked")
        async def on_locked(event: Event) -> None:
            delivered.add(event.event_id)

        async with consumer:
            first = await publish()
            await eventually(lambda: first in delivered, within=10, what="a first event")
            proxy.blackhole()
            # Its notification wakes the reader, whose fetch goes into the black hole.
            lost = await publish()
            await eventually(
                lambda: proxy.dropped_bytes > 0, within=10, what="the fetch to be sent"
            )
            proxy.restore()
            after = await publish()
            await eventually(
                lambda: {lost, after} <= delivered,
                within=15,
                what="delivery once the lost read is given up",
            )
            assert consumer.state is ConsumerState.RUNNING
    assert delivered == {first, lost, after}


@contextlib.asynccontextmanager
async def _pool_through(proxy: TcpProxy, dsn: str, size: int = 3) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(min_size=size, max_size=size, **proxy.connect_args(dsn)) as pool:
        yield pool


async def test_a_commit_whose_answer_is_lost_is_not_run_again(
    dispatch_postgres: TestPostgres,
    dispatch_pool: asyncpg.Pool,
    dispatcher: Dispatcher,
    dispatch_dsn: str,
) -> None:
    """The server commits a group but the connection dies before the client hears it.

    The consumer cannot know whether the commit happened; it runs the group again. It must
    first ask the database which of those events are already handled: a handler whose
    write hits its own unique key would otherwise fail again and again, and the event,
    handled once already, would end as a dead letter.
    """
    await dispatch_pool.execute(
        "CREATE TABLE IF NOT EXISTS lost_commit_effects (event_id text PRIMARY KEY)"
    )
    calls: collections.Counter[str] = collections.Counter()
    async with TcpProxy(**_upstream(dispatch_postgres)) as proxy:  # type: ignore[arg-type]
        connect_args = proxy.connect_args(dispatch_dsn)
        async with asyncpg.create_pool(min_size=3, max_size=3, **connect_args) as pool:
            consumer = Consumer(
                pool,
                name="lost-commit",
                concurrency=1,
                poll_interval=0.2,
                retry_delays=(30.0, 30.0),
            )

            @consumer.on("credit.locked")
            async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
                calls[event.event_id] += 1
                await conn.execute(
                    "INSERT INTO lost_commit_effects (event_id) VALUES ($1)", event.event_id
                )

            proxy.lose_commit_reply(after=b"lost_commit_effects")
            async with consumer:
                envelope = await dispatcher.publish(
                    "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
                )
                await asyncio.wait_for(consumer.wait_idle(), timeout=20)
                stats = consumer.stats
                assert (stats.dead_lettered, stats.retried) == (0, 0)
    assert proxy.lost_commits == 1
    # It committed once, with its marker; the run after the lost answer saw the marker.
    assert (
        await dispatch_pool.fetchval(
            "SELECT count(*) FROM lost_commit_effects WHERE event_id = $1", envelope.event_id
        )
        == 1
    )
    assert calls[envelope.event_id] == 1
    rows = await dispatch_pool.fetch(
        "SELECT outcome FROM dispatcher_dedup WHERE consumer = 'lost-commit'"
    )
    assert [r["outcome"] for r in rows] == ["handled"]
    attempts = await dispatch_pool.fetchval(
        "SELECT count(*) FROM dispatcher_attempt WHERE consumer = 'lost-commit'"
    )
    dead = await dispatch_pool.fetchval(
        "SELECT count(*) FROM dispatcher_dead_letter WHERE consumer = 'lost-commit'"
    )
    assert (attempts, dead) == (0, 0)


async def test_a_replay_whose_commit_answer_is_lost_is_not_run_again(
    dispatch_postgres: TestPostgres,
    dispatch_pool: asyncpg.Pool,
    dispatcher: Dispatcher,
    dispatch_dsn: str,
) -> None:
    """The same for a replayed dead letter: its succeeded replay is found, not run again."""
    await dispatch_pool.execute(
        "CREATE TABLE IF NOT EXISTS lost_replay_effects (event_id text PRIMARY KEY)"
    )
    broken = {"yes": True}
    calls: collections.Counter[str] = collections.Counter()
    async with TcpProxy(**_upstream(dispatch_postgres)) as proxy:  # type: ignore[arg-type]
        connect_args = proxy.connect_args(dispatch_dsn)
        async with asyncpg.create_pool(min_size=3, max_size=3, **connect_args) as pool:
            consumer = Consumer(
                pool, name="lost-replay", concurrency=1, poll_interval=0.2, retry_delays=()
            )

            @consumer.on("credit.locked")
            async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
                calls[event.event_id] += 1
                # The replay's statement text differs (a prepared one is sent without it):
                # the proxy waits for it on the replay's link.
                note = "first run" if broken["yes"] else "replay"
                await conn.execute(
                    f"INSERT INTO lost_replay_effects (event_id) VALUES ($1) -- {note}",
                    event.event_id,
                )
                if broken["yes"]:
                    raise RuntimeError("the projection is read-only")

            dead_letters = DeadLetters(dispatch_pool)
            async with consumer:
                envelope = await dispatcher.publish(
                    "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
                )
                await asyncio.wait_for(consumer.wait_idle(), timeout=20)
                [letter] = (await dead_letters.list("lost-replay")).items
                broken["yes"] = False
                calls.clear()
                proxy.lose_commit_reply(after=b"-- replay")
                await dead_letters.replay(letter.dead_letter_id, replayed_by="ops:tests")
                await eventually(lambda: consumer.stats.replayed == 1, within=20, what="the replay")
    assert proxy.lost_commits == 1
    assert calls[envelope.event_id] == 1
    row = await dead_letters.get(letter.dead_letter_id)
    assert (row.replay_status, row.replay_error) == ("succeeded", None)
    assert await dispatch_pool.fetchval("SELECT count(*) FROM lost_replay_effects") == 1
