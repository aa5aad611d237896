"""The LISTEN reconnect backoff starts over after a healthy period (issue item 9)."""

from __future__ import annotations

import asyncpg
import pytest

from dispatch_aio import Consumer, Event

from .helpers import eventually

pytestmark = pytest.mark.anyio


async def test_reconnect_delays_start_over_after_a_healthy_session(
    dispatch_pool: asyncpg.Pool, dispatch_dsn: str
) -> None:
    opened: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(dispatch_dsn)
        opened.append(conn)
        return conn

    # The second delay is a minute: reaching it would time the test out.
    consumer = Consumer(
        dispatch_pool,
        name="flaky-network",
        listen_connect=connect,
        poll_interval=30,
        heartbeat_interval=0.05,
        listen_reconnect_delays=(0.05, 60),
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        pass

    async with consumer:
        listener = consumer.listener
        assert listener is not None
        for disconnect in range(1, 4):
            await eventually(
                lambda: listener.connected and listener.heartbeats >= 1,
                within=5,
                what="a healthy session",
            )
            pid = opened[-1].get_server_pid()
            assert await dispatch_pool.fetchval("SELECT pg_terminate_backend($1)", pid)
            await eventually(
                lambda d=disconnect: listener.reconnects >= d and listener.connected,  # type: ignore[misc]
                within=5,
                what=f"reconnect number {disconnect} after the first delay",
            )
    assert len(opened) == 4
