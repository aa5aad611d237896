"""kill -9 mid-stream, of the fan-out worker and of the inbox's server: every event ends in
the receiver's table exactly once, and the receiver's own consumer handles each once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event, FanoutConfig, Registry
from dispatch_aio.fanout import Fanout
from dispatch_aio.pytest_plugin import TestPostgres
from dispatch_aio.testing import drain

from .delivery_helpers import HERE, InboxProcess, extra_database, fanout_config, inbox_process
from .helpers import eventually, locked_payload, uid

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REGISTRY = Registry.load()
TOTAL = 300
BATCH = 10


async def publish_stream(dispatcher: Dispatcher, sent: list[str]) -> None:
    """Publish TOTAL events in small transactions, paced so that a kill lands mid-stream."""
    people = [uid("per") for _ in range(8)]
    for start in range(0, TOTAL, BATCH):
        envelopes = await dispatcher.publish_many(
            [
                {
                    "event_type": "credit.locked",
                    "payload": locked_payload(),
                    "subject": people[i % len(people)],
                    "actor": "system:revenue",
                }
                for i in range(start, start + BATCH)
            ]
        )
        sent.extend(e.event_id for e in envelopes)
        await asyncio.sleep(0.02)  # pacing the producer, not synchronisation


@contextlib.asynccontextmanager
async def receiving_side(receiver_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, Consumer]]:
    """The receiver's pool and its own consumer, recording each event it handles."""
    pool = await asyncpg.create_pool(receiver_dsn, min_size=1, max_size=8)
    await pool.execute("CREATE TABLE seen (event_id text NOT NULL)")
    consumer = Consumer(pool, name="coaching.projection", registry=REGISTRY, concurrency=4)

    @consumer.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO seen VALUES ($1)", event.event_id)

    try:
        async with consumer:
            yield pool, consumer
    finally:
        await pool.close()


async def received(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM dispatcher_event"))


async def assert_exactly_once(pool: asyncpg.Pool, consumer: Consumer, sent: list[str]) -> None:
    rows = await pool.fetch("SELECT event_id FROM dispatcher_event")
    assert sorted(r["event_id"] for r in rows) == sorted(sent)
    await drain(consumer, timeout=60)
    seen = await pool.fetch("SELECT event_id, count(*) AS n FROM seen GROUP BY event_id")
    assert {r["event_id"]: r["n"] for r in seen} == dict.fromkeys(sent, 1)


async def start_worker(dsn: str, config: Path) -> asyncio.subprocess.Process:
    # A 3 s lease (default 10): the restarted worker waits for the killed one's to run out.
    return await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "fanout_process.py"), dsn, str(config), "3"
    )


async def test_kill_9_of_the_fanout_worker_mid_stream(
    dispatch_dsn: str,
    dispatcher: Dispatcher,
    dispatch_postgres: TestPostgres,
    tmp_path: Path,
) -> None:
    sent: list[str] = []
    async with (
        extra_database(dispatch_postgres) as receiver_dsn,
        inbox_process(receiver_dsn) as inbox,
        receiving_side(receiver_dsn) as (receiver, consumer),
    ):
        config = tmp_path / "fanout.json"
        config.write_text(json.dumps(fanout_config({"coaching": inbox.url})))
        worker = await start_worker(dispatch_dsn, config)
        publisher = asyncio.create_task(publish_stream(dispatcher, sent))
        try:
            await eventually(lambda: received(receiver), within=60, what="some events", every=0.005)
            worker.kill()  # SIGKILL: no drain, POSTs and outcome commits cut anywhere
            await worker.wait()
            at_kill = await received(receiver)
            worker = await start_worker(dispatch_dsn, config)
            await publisher
            assert at_kill < TOTAL
            await eventually(
                lambda: _count_is(receiver, TOTAL), within=90, what="every event received"
            )
            worker.send_signal(signal.SIGTERM)  # drains and exits cleanly
            assert await asyncio.wait_for(worker.wait(), timeout=60) == 0
        finally:
            publisher.cancel()
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        await assert_exactly_once(receiver, consumer, sent)


async def _count_is(pool: asyncpg.Pool, expected: int) -> bool:
    return await received(pool) == expected


async def test_kill_9_of_the_inbox_server_mid_stream(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_postgres: TestPostgres
) -> None:
    sent: list[str] = []
    async with (
        extra_database(dispatch_postgres) as receiver_dsn,
        receiving_side(receiver_dsn) as (receiver, consumer),
    ):
        inbox = InboxProcess(receiver_dsn)
        await inbox.start()
        config = FanoutConfig.from_mapping(
            fanout_config({"coaching": inbox.url}, retry_delays=[0.05] * 400)
        )
        worker = Fanout(dispatch_pool, config, registry=REGISTRY)
        publisher = asyncio.create_task(publish_stream(dispatcher, sent))
        try:
            async with worker:
                await eventually(
                    lambda: received(receiver), within=60, what="some events", every=0.005
                )
                inbox.kill()  # SIGKILL: requests in flight lose their answers
                assert inbox.process is not None
                await inbox.process.wait()
                retried = worker.consumers["coaching"].stats.retried
                await eventually(
                    lambda: worker.consumers["coaching"].stats.retried > retried + 5,
                    within=30,
                    what="deliveries failing while the inbox is down",
                )
                await inbox.start()  # same port: the configured URL
                await publisher
                await eventually(
                    lambda: _count_is(receiver, TOTAL), within=90, what="every event received"
                )
                assert worker.consumers["coaching"].stats.dead_lettered == 0
        finally:
            publisher.cancel()
            await inbox.stop()
        await assert_exactly_once(receiver, consumer, sent)
