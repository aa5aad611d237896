"""An httpx transport that runs the SSRF guard on every new connection, after DNS.

httpx resolves and connects inside httpcore's network backend, so the guard sits there:
:class:`GuardedBackend` resolves the host itself, refuses the whole connection when any
address is refused, and connects to a checked address (never to the name, which a
second DNS answer could point elsewhere). TLS still verifies the certificate against
the URL's host name, which httpcore passes separately. Proxies from the environment
and redirects are never used: either would route around the guard.
"""

from __future__ import annotations

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
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

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
        closer = getattr(self._stream, "aclose", None)
        if closer is not None:
            await closer()


class GuardedTransport(httpx.AsyncBaseTransport):
    """A keep-alive connection pool to one endpoint, every connection checked by the guard."""

    def __init__(self, endpoint: Endpoint, *, resolve: Resolver = system_resolve) -> None:
        context: ssl.SSLContext = httpx.create_ssl_context()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=endpoint.max_connections,
            max_keepalive_connections=endpoint.max_keepalive_connections,
            keepalive_expiry=endpoint.keepalive_expiry,
            network_backend=GuardedBackend(
                endpoint.url, allow_private_network=endpoint.allow_private_network, resolve=resolve
            ),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request over the pool."""
        assert isinstance(request.stream, httpx.AsyncByteStream)
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
        try:
            response = await self._pool.handle_async_request(core_request)
        except Exception as exc:
            translated = _translated(exc)
            if translated is exc:
                raise
            raise translated from exc
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._pool.aclose()
