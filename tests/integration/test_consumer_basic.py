"""The consumer's main path: handle, commit with the handler's writes, stop cleanly."""

from __future__ import annotations

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event

from .helpers import locked_payload, uid

pytestmark = pytest.mark.anyio


async def test_handles_each_event_once_with_handler_writes(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await dispatch_pool.execute("CREATE TABLE seen (event_id text PRIMARY KEY, subject text)")
    subjects = [uid("per") for _ in range(5)]
    published = []
    for i in range(40):
        env = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=subjects[i % 5], actor="system:tests"
        )
        published.append(env.event_id)

    consumer = Consumer(dispatch_pool, name="coaching", poll_interval=0.2, concurrency=4)

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO seen VALUES ($1, $2)", event.event_id, event.subject)

    async with consumer:
        await consumer.wait_idle()
        assert consumer.stats.handled == 40
    rows = await dispatch_pool.fetch("SELECT event_id FROM seen")
    assert sorted(r["event_id"] for r in rows) == sorted(published)
    dedup = await dispatch_pool.fetchval(
        "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'coaching'"
    )
    assert dedup == 40
    cursor = await dispatch_pool.fetchrow(
        "SELECT last_position FROM dispatcher_cursor WHERE consumer = 'coaching'"
    )
    top = await dispatch_pool.fetchval("SELECT max(position) FROM dispatcher_event")
    assert cursor["last_position"] == top
