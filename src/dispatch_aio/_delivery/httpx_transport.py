"""An httpx transport that runs the SSRF guard on every new connection, after DNS.

For applications that POST with httpx themselves and want fan-out's guard; fan-out
uses the leaner :class:`~dispatch_aio._delivery.transport.EndpointClient`.

httpx resolves and connects inside httpcore's network backend, so the guard sits there:
:class:`GuardedBackend` resolves the host itself, refuses the whole connection when any
address is refused, and connects to a checked address (never to the name, which a
second DNS answer could point elsewhere). TLS still verifies the certificate against
the URL's host name, which httpcore passes separately. Proxies from the environment
and redirects are never used: either would route around the guard.
"""

from __future__ import annotations

import contextlib
import ssl
import typing
from collections.abc import AsyncIterator, Iterable

import anyio
import httpcore
import httpx

from .config import Endpoint
from .ssrf import Resolver, resolve_checked, system_resolve

__all__ = ["GuardedBackend", "GuardedTransport"]

_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.TimeoutException, httpx.TimeoutException),
)


def _translated(exc: Exception) -> Exception:
    for source, target in _EXCEPTIONS:
        if isinstance(exc, source):
            return target(str(exc) or type(exc).__name__)
    return exc


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the SSRF guard between resolution and connect."""

    def __init__(
        self, endpoint: str, *, allow_private_network: bool, resolve: Resolver = system_resolve
    ) -> None:
        self._endpoint = endpoint
        self._allow = allow_private_network
        self._resolve = resolve
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve ``host``, check every address, connect to the first that answers."""
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve_checked(
                    self._endpoint,
                    host,
                    port,
                    allow_private_network=self._allow,
                    resolve=self._resolve,
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refused: fan-out only speaks TCP to checked addresses."""
        raise httpcore.ConnectError("fan-out does not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        """Sleep (httpcore's retry back-off)."""
        await self._inner.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(
        self,
        stream: typing.AsyncIterable[bytes],
        on_close: typing.Callable[[], typing.Awaitable[None]],
    ) -> None:
        self._stream = stream
        self._on_close = on_close
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as exc:
            translated = _translated(exc)
            if translated is exc:
                raise
            raise translated from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            closer = getattr(self._stream, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    await closer()
        finally:
            await self._on_close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """A keep-alive connection pool to one endpoint, every connection checked by the guard.

    A lean pool rather than httpcore's: it serves one origin, so a request takes the
    most recently used idle connection or opens one while fewer than
    ``max_connections`` are busy, and waits otherwise (``pool`` timeout). httpcore's own
    pool re-examines every connection for every waiting request, which costs more CPU
    than the POST itself when dozens of requests are in flight.
    """

    def __init__(self, endpoint: Endpoint, *, resolve: Resolver = system_resolve) -> None:
        self._ssl_context: ssl.SSLContext = httpx.create_ssl_context()
        self._keepalive_expiry = endpoint.keepalive_expiry
        self._max_idle = endpoint.max_keepalive_connections
        self._slots = anyio.Semaphore(endpoint.max_connections)
        self._idle: list[httpcore.AsyncHTTPConnection] = []
        self._closed = False
        self._backend = GuardedBackend(
            endpoint.url, allow_private_network=endpoint.allow_private_network, resolve=resolve
        )

    async def _take_idle(self) -> httpcore.AsyncHTTPConnection | None:
        """The most recently used idle connection that is still good; closes stale ones."""
        while self._idle:
            connection = self._idle.pop()
            # has_expired: past keepalive_expiry, or the server closed its end.
            if connection.is_idle() and not connection.has_expired():
                return connection
            await _close_quietly(connection)
        return None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request over a pooled connection (opened, and checked, when needed)."""
        assert isinstance(request.stream, httpx.AsyncByteStream)
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        timeouts = request.extensions.get("timeout", {})
        try:
            with anyio.fail_after(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no connection to the endpoint became free") from None
        connection: httpcore.AsyncHTTPConnection | None = None
        try:
            connection = await self._take_idle()
            if connection is None:
                connection = httpcore.AsyncHTTPConnection(
                    # The URL's origin: scheme, host, and the port (the scheme's default
                    # when the URL names none).
                    origin=core_request.url.origin,
                    ssl_context=self._ssl_context,
                    keepalive_expiry=self._keepalive_expiry,
                    network_backend=self._backend,
                )
            response = await connection.handle_async_request(core_request)
        except BaseException as exc:
            if connection is not None:
                with anyio.CancelScope(shield=True):
                    await _close_quietly(connection)
            self._slots.release()
            if isinstance(exc, Exception):
                translated = _translated(exc)
                if translated is not exc:
                    raise translated from exc
            raise
        assert isinstance(response.stream, typing.AsyncIterable)
        done = connection

        async def give_back() -> None:
            # The answer is closed: an HTTP/1.1 connection read to its end is idle again
            # and goes back to the pool; one cut off mid-answer is closed.
            try:
                if done.is_idle() and not self._closed and len(self._idle) < self._max_idle:
                    self._idle.append(done)
                else:
                    with anyio.CancelScope(shield=True):
                        await _close_quietly(done)
            finally:
                self._slots.release()

        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, give_back),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection; connections in use close when their answer does."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await _close_quietly(connection)


async def _close_quietly(connection: httpcore.AsyncHTTPConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.aclose()
