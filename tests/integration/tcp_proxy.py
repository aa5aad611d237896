"""A loopback TCP proxy in front of PostgreSQL that can turn into a black hole.

``blackhole()`` keeps every socket open but drops the bytes flowing either way, as a
network partition or a dead peer behind NAT does: the client sees a half-open
connection, not a closed one. ``restore()`` forwards again (also for new connections).

``forge_termination()`` sends every client a server's FATAL "terminating connection"
error, silences that link, and closes it only ``close_after`` seconds later: the close
that a real server sends right after the error is held back. In that window asyncpg's
protocol is left mid-state and its next call raises ``InternalClientError`` ("cannot
switch to state ...") rather than ``InterfaceError``.

``lose_commit_reply(after=marker)`` loses the answer to a commit: on the first link whose
client has sent ``marker`` (a table name its transaction writes), the next ``COMMIT``
reaches the server, which commits, but its reply never reaches the client, and the link
is closed: the client cannot know whether its transaction committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forward 127.0.0.1:<port> to a unix socket (or a TCP host and port)."""

    def __init__(
        self,
        *,
        unix_path: str | Path | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        if (unix_path is None) == (host is None):
            raise ValueError("give either unix_path or host and port")
        self._unix_path = str(unix_path) if unix_path is not None else None
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.blackholed = False
        self.accepted = 0
        self.dropped_bytes = 0
        # Links silenced by forge_termination(): (client writer, server writer) pairs.
        self._links: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}
        self._silenced: set[asyncio.StreamWriter] = set()
        # lose_commit_reply(): the marker to wait for, the links that sent it, commits lost.
        self._commit_marker: bytes | None = None
        self._marked: set[asyncio.StreamWriter] = set()
        self._close_after = 0.2
        self.lost_commits = 0

    @property
    def port(self) -> int:
        """The local port clients connect to."""
        assert self._server is not None, "the proxy is not started"
        return int(self._server.sockets[0].getsockname()[1])

    def connect_args(self, dsn: str) -> dict[str, Any]:
        """asyncpg connect/create_pool arguments for ``dsn``'s user and database, via here."""
        parts = urlsplit(dsn)
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": parts.username or "postgres",
            "database": parts.path.lstrip("/"),
            "ssl": False,
        }

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    def blackhole(self) -> None:
        """Stop forwarding in both directions, closing nothing."""
        self.blackholed = True

    def restore(self) -> None:
        """Forward again."""
        self.blackholed = False

    def forge_termination(self, close_after: float = 1.0) -> int:
        """Send each open link's client a FATAL 57P01 error, silence it, close it later.

        Returns how many links were hit. New connections are forwarded normally.
        """
        message = _error_response(
            severity="FATAL",
            code="57P01",
            text="terminating connection due to administrator command",
        )
        hit = 0
        for client_w, server_w in list(self._links.items()):
            if client_w in self._silenced or client_w.is_closing():
                continue
            self._silenced.add(client_w)
            self._silenced.add(server_w)
            client_w.write(message)
            loop = asyncio.get_running_loop()
            loop.call_later(close_after, client_w.close)
            loop.call_later(close_after, server_w.close)
            hit += 1
        return hit

    def lose_commit_reply(self, *, after: bytes, close_after: float = 0.2) -> None:
        """Arm: the next COMMIT on a link that has sent ``after`` commits, unanswered.

        The server gets the COMMIT and commits; the link's server-to-client direction is
        silenced from then on and both sockets close ``close_after`` seconds later. Fires
        once; ``lost_commits`` counts it.
        """
        self._commit_marker = after
        self._close_after = close_after

    def _inspect(self, data: bytes, server_w: asyncio.StreamWriter) -> None:
        """Client-to-server bytes of one link, for lose_commit_reply()."""
        marker = self._commit_marker
        if marker is None:
            return
        if server_w not in self._marked:
            if marker in data:
                self._marked.add(server_w)
            return
        if _COMMIT_QUERY not in data:  # not a word inside another statement's text
            return
        client_w = next((c for c, s in self._links.items() if s is server_w), None)
        if client_w is None:
            return
        self._commit_marker = None
        self._marked.clear()
        self.lost_commits += 1
        self._silenced.add(client_w)  # the server's reply is dropped on its way back
        loop = asyncio.get_running_loop()
        loop.call_later(self._close_after, client_w.close)
        loop.call_later(self._close_after, server_w.close)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(client_w)
        try:
            if self._unix_path is not None:
                server_r, server_w = await asyncio.open_unix_connection(self._unix_path)
            else:
                server_r, server_w = await asyncio.open_connection(self._host, self._port)
        except OSError:
            client_w.close()
            self._writers.discard(client_w)
            self._tasks.discard(task)  # type: ignore[arg-type]
            return
        self._writers.add(server_w)
        self._links[client_w] = server_w
        try:
            pipes = [
                asyncio.ensure_future(self._pipe(client_r, server_w)),
                asyncio.ensure_future(self._pipe(server_r, client_w)),
            ]
            try:
                # Either side closing ends the link: close both.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._links.pop(client_w, None)
            for writer in (client_w, server_w):
                self._silenced.discard(writer)
                self._writers.discard(writer)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                if self.blackholed or writer in self._silenced:
                    self.dropped_bytes += len(data)
                    continue
                writer.write(data)
                if writer in self._links.values():
                    self._inspect(data, writer)
                await writer.drain()


#: A simple-protocol Query message "COMMIT;", as asyncpg sends it for a transaction.
_COMMIT_QUERY = b"Q" + struct.pack("!i", 4 + len(b"COMMIT;\x00")) + b"COMMIT;\x00"


def _error_response(*, severity: str, code: str, text: str) -> bytes:
    """A protocol v3 ErrorResponse message as a server sends it."""
    fields = b"".join(
        tag + value.encode() + b"\0"
        for tag, value in ((b"S", severity), (b"V", severity), (b"C", code), (b"M", text))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body
