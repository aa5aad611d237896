"""One endpoint's connections: a keep-alive pool, every new connection checked by the SSRF guard.

:class:`EndpointClient` POSTs to one origin. A request takes the most recently used
idle connection, or opens one while fewer than ``max_connections`` are busy, and
waits otherwise (up to the ``connect_timeout``: PoolTimeout). Opening a connection
resolves the host itself, refuses the whole connection when any address is refused
(UnsafeEndpointError), and connects to a checked address, never to the name, which a
second DNS answer could point elsewhere. TLS still verifies the certificate against
the URL's host name. Proxies from the environment and redirects are never used:
either would route around the guard.

A keep-alive connection the server closed just as it was taken (its FIN still in
flight) fails before any byte of an answer; the request is then sent once more on a
fresh connection. That is safe here: the inbox is idempotent on the event id.

Failures are httpx's exception types (ConnectError, ConnectTimeout, PoolTimeout,
ReadTimeout, ReadError, RemoteProtocolError), the names dead letters have always shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urlsplit

import httpx

from .config import Endpoint
from .http1 import Answer, Connection
from .ssrf import Resolver, resolve_checked, system_resolve

__all__ = ["EndpointClient"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _forbidden(value: str) -> bool:
    return "\r" in value or "\n" in value or "\0" in value


class EndpointClient:
    """POSTs to one endpoint URL over pooled keep-alive HTTP/1.1 connections.

    Cancellation closes the connection of the request cancelled (its answer may still
    be on the wire); the pool slot is given back either way.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        resolve: Resolver = system_resolve,
        user_agent: str = "dispatch-aio",
        excerpt_bytes: int = 512,
        drain_limit: int = 64 * 1024,
    ) -> None:
        parts = urlsplit(endpoint.url)
        self.url = endpoint.url
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self._ssl: ssl.SSLContext | None = (
            httpx.create_ssl_context() if parts.scheme == "https" else None
        )
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        authority = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None:
            authority += f":{parts.port}"
        self._head = (
            f"POST {target} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: {user_agent}\r\n"
        ).encode("ascii")
        self._allow = endpoint.allow_private_network
        self._resolve = resolve
        self._connect_timeout = endpoint.connect_timeout
        self._read_timeout = endpoint.read_timeout
        self._keepalive_expiry = endpoint.keepalive_expiry
        self._max_idle = endpoint.max_keepalive_connections
        self._slots = asyncio.Semaphore(endpoint.max_connections)
        self._excerpt_bytes = excerpt_bytes
        self._drain_limit = drain_limit
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._closed = False

    async def post(
        self,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (one timer per POST, not two)
    ) -> Answer:
        """POST ``body`` with ``headers`` (lower-case names); the answer, read to its end.

        ``timeout`` bounds the whole attempt (pool wait, connect, answer): past it,
        TimeoutError. Raises httpx's transport exceptions, UnsafeEndpointError from the
        guard, and LocalProtocolError for a header that would break the request apart.
        """
        if self._closed:
            raise httpx.ConnectError("the client is closed")
        request = self._request(body, headers)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self._slots.locked():
            await self._wait_for_slot(deadline)
        else:
            await self._slots.acquire()  # free: no suspension, no timer
        try:
            connection = self._take_idle()
            if connection is not None:
                try:
                    return await self._send(connection, request, deadline)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    if connection.heard_back or connection.answered == 0:
                        raise
                    # A kept-alive connection the server had just closed: once more, anew.
            return await self._send(await self._open(deadline), request, deadline)
        finally:
            self._slots.release()

    def _bounded(self, limit: float, deadline: float | None) -> tuple[float, bool]:
        """``limit`` cut to what is left before ``deadline``; True when the deadline binds."""
        if deadline is None:
            return limit, False
        left = deadline - asyncio.get_running_loop().time()
        return (left, True) if left < limit else (limit, False)

    async def _wait_for_slot(self, deadline: float | None) -> None:
        wait, overall = self._bounded(self._connect_timeout, deadline)
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                await self._slots.acquire()
        except TimeoutError:
            if overall:
                raise TimeoutError("the POST took longer than its total timeout") from None
            raise httpx.PoolTimeout("no connection to the endpoint became free") from None

    def _request(self, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [self._head]
        for name, value in headers.items():
            if _forbidden(name) or _forbidden(value) or ":" in name:
                raise httpx.LocalProtocolError(f"header {name!r} cannot be sent")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"content-length: %d\r\n\r\n" % len(body))
        lines.append(body)
        return b"".join(lines)

    async def _send(self, connection: Connection, request: bytes, deadline: float | None) -> Answer:
        self._busy.add(connection)
        try:
            answer = await connection.request(
                request,
                read_timeout=self._read_timeout,
                deadline=deadline,
                excerpt_bytes=self._excerpt_bytes,
                drain_limit=self._drain_limit,
            )
        finally:
            self._busy.discard(connection)
        if connection.usable and not self._closed and len(self._idle) < self._max_idle:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    def _take_idle(self) -> Connection | None:
        """The most recently used idle connection still good; closes stale ones."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable and now - connection.idle_since < self._keepalive_expiry:
                return connection
            connection.close()
        return None

    async def _open(self, deadline: float | None) -> Connection:
        """A new connection to a checked address of the host (ConnectError, ConnectTimeout)."""
        host, port = self._host, self._port
        loop = asyncio.get_running_loop()
        failure: Exception | None = None
        wait, overall = self._bounded(self._connect_timeout, deadline)
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                try:
                    addresses = await resolve_checked(
                        self.url,
                        host,
                        port,
                        allow_private_network=self._allow,
                        resolve=self._resolve,
                    )
                except OSError as exc:
                    raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
                for address in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            Connection,
                            address,
                            port,
                            ssl=self._ssl,
                            server_hostname=host if self._ssl is not None else None,
                        )
                    except (OSError, ssl.SSLError) as exc:
                        failure = exc
                        continue
                    return connection
        except TimeoutError:
            if overall:
                raise TimeoutError("the POST took longer than its total timeout") from None
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        assert failure is not None
        raise httpx.ConnectError(str(failure) or type(failure).__name__) from failure

    async def aclose(self) -> None:
        """Close every connection; a request in flight fails with ReadError. Idempotent."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in [*idle, *self._busy]:
            connection.close()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)  # let the transports run their close callbacks
