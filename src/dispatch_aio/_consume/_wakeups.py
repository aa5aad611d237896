"""The consumer's LISTEN wiring: which connection it listens on, and whom each notice wakes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from .._sql import channel_for, lease_channel_for, replay_channel_for
from .._storage import release
from ._config import ConsumerConfig
from ._listener import Listener
from ._members import Members
from ._reader import ReadLoop

__all__ = ["Wakeups"]


class Wakeups:
    """Builds a consumer's :class:`Listener` and routes its notices to the running parts."""

    def __init__(
        self,
        *,
        name: str,
        config: ConsumerConfig,
        pool: asyncpg.Pool,
        subscriptions: Mapping[str, object],
        listen_connect: Callable[[], Awaitable[asyncpg.Connection]] | None,
        dsn: str | None,
        log_extra: dict[str, Any],
    ) -> None:
        self.name = name
        self.config = config
        self.pool = pool
        self._subscriptions = subscriptions
        self._listen_connect = listen_connect
        self._dsn = dsn
        self._log = log_extra
        self._channel = channel_for(config.db_schema)
        self._replay_channel = replay_channel_for(config.db_schema)
        self._lease_channel = lease_channel_for(config.db_schema)

    def on_pool(self) -> bool:
        """Whether the LISTEN connection is held out of the consumer's pool."""
        return self.config.listen and self._listen_connect is None and self._dsn is None

    def listener(self, reader: ReadLoop, members: Members) -> Listener:
        """The listener for a running consumer: wakes ``reader`` and ``members``."""
        self._reader = reader
        self._members = members
        config = self.config
        return Listener(
            self._connect_listener,
            [self._channel, self._replay_channel, self._lease_channel],
            self._on_notify,
            self._on_listen_connected,
            reconnect_delays=config.listen_reconnect_delays,
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            log_extra=self._log,
            disconnect=self._disconnect_listener if self.on_pool() else None,
        )

    async def _connect_listener(self) -> asyncpg.Connection:
        if self._listen_connect is not None:
            return await self._listen_connect()
        if self._dsn is not None:
            return await asyncpg.connect(self._dsn)
        # Held out of the pool for the listener's session; given back when it ends.
        conn: asyncpg.Connection = await self.pool.acquire(timeout=self.config.acquire_timeout)
        return conn

    async def _disconnect_listener(self, conn: asyncpg.Connection) -> None:
        await release(self.pool, conn, self.config.commit_timeout)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == self._lease_channel:
            self._members.on_notify(payload)
        elif channel == self._replay_channel:
            if payload == self.name:
                self._reader.request_replays()
        elif payload in self._subscriptions:
            self._reader.wake.set()

    def _on_listen_connected(self) -> None:
        # Notifications sent while disconnected are lost: read everything once more, and
        # look at the group again (a member that joined before its LISTEN was up misses
        # the others handing it its share; without this it waits for its next re-check).
        self._reader.request_replays()
        self._members.wake.set()
