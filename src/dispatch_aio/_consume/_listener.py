"""The consumer's LISTEN connection: wakes the fetch loop, never carries events.

It is a connection of its own (from ``listen_connect``, the DSN, or held out of the
pool for the consumer's life). A heartbeat query detects a half-open socket; on any
infrastructure failure the connection is thrown away and made again after the next of
the reconnect delays. The delays start over once a session has been healthy (connected
and answering a heartbeat), so that disconnects spread over a long life never add up to
the longest delay. Any other exception is a bug and propagates (the consumer fails).
Every (re)connect triggers a catch-up read, because notifications sent while
disconnected are never replayed. Polling goes on all the time, so a lost listener costs
latency, never delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import asyncpg

from .._storage import is_infrastructure, terminate

__all__ = ["Listener"]

logger = logging.getLogger("dispatch_aio.listener")

Connect = Callable[[], Awaitable[asyncpg.Connection]]
Disconnect = Callable[[asyncpg.Connection], Awaitable[None]]


class Listener:
    """LISTEN on some channels and call ``on_notify(channel, payload)`` for each notice."""

    def __init__(
        self,
        connect: Connect,
        channels: Sequence[str],
        on_notify: Callable[[str, str], None],
        on_connected: Callable[[], None],
        *,
        reconnect_delays: Sequence[float],
        heartbeat_interval: float,
        heartbeat_timeout: float,
        log_extra: dict[str, Any] | None = None,
        disconnect: Disconnect | None = None,
    ) -> None:
        self._connect = connect
        self._disconnect = disconnect
        self._channels = list(channels)
        self._on_notify = on_notify
        self._on_connected = on_connected
        self._delays = list(reconnect_delays)
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._extra = log_extra or {}
        self.connected = False
        self.reconnects = 0
        #: Heartbeats answered in the current session.
        self.heartbeats = 0
        self._conn: asyncpg.Connection | None = None
        self._lost = anyio.Event()
        self._task_status: anyio.abc.TaskStatus[None] | None = None

    def _notice(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self._on_notify(channel, payload)

    def _terminated(self, _conn: Any) -> None:
        self._lost.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep a LISTEN connection alive until cancelled.

        Reports started after the first attempt, successful or not: LISTEN failing at
        start must not keep the consumer from polling.
        """
        failures = 0
        self._task_status = task_status
        while True:
            try:
                await self._session()
            except Exception as exc:
                if not is_infrastructure(exc):
                    raise
                logger.warning(
                    "listen connection failed: %s: %s",
                    type(exc).__name__,
                    exc,
                    extra=self._extra,
                )
            finally:
                self.connected = False
                with anyio.CancelScope(shield=True):
                    await self._discard()
            if self.heartbeats:
                failures = 0  # it was healthy: a new run of trouble starts over
            self._report_started()
            delay = self._delays[min(failures, len(self._delays) - 1)]
            failures += 1
            self.reconnects += 1
            await anyio.sleep(delay)

    def _report_started(self) -> None:
        status, self._task_status = self._task_status, None
        if status is not None:
            status.started()

    async def _session(self) -> None:
        self._lost = anyio.Event()
        self.heartbeats = 0
        with anyio.fail_after(self._heartbeat_timeout + 10):
            conn = self._conn = await self._connect()
        conn.add_termination_listener(self._terminated)
        for channel in self._channels:
            await conn.add_listener(channel, self._notice)
        self.connected = True
        logger.info("listening on %s", ", ".join(self._channels), extra=self._extra)
        self._report_started()
        self._on_connected()
        while True:
            with anyio.move_on_after(self._heartbeat_interval):
                await self._lost.wait()
            if self._lost.is_set() or conn.is_closed():
                raise ConnectionError("listen connection closed")
            with anyio.fail_after(self._heartbeat_timeout):
                await conn.execute("SELECT 1")
            self.heartbeats += 1

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        terminate(conn)
        if self._disconnect is not None:
            try:
                await self._disconnect(conn)
            except Exception as exc:  # giving back a dead connection must not stop us
                logger.debug("discarding the listen connection: %s", exc, extra=self._extra)
