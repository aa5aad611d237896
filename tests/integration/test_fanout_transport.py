"""The fan-out's connection pool: a bound on connections, reuse, and no reuse of a
connection whose answer was cut off; the same for the httpx transport kept for
applications (GuardedTransport)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from dispatch_aio._delivery.config import Endpoint
from dispatch_aio._delivery.httpx_transport import GuardedTransport
from dispatch_aio._delivery.transport import EndpointClient

from .delivery_helpers import SECRET, serve_in_process

pytestmark = pytest.mark.anyio

Receive = Any
Send = Any


class HeldApp:
    """Holds every request until ``release`` is set; records concurrency and client ports."""

    def __init__(self, body: bytes = b"{}") -> None:
        self.release = asyncio.Event()
        self.body = body
        self.running = 0
        self.most = 0
        self.arrived = asyncio.Condition()
        self.count = 0
        self.clients: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.clients.append(scope["client"][1])
        self.running += 1
        self.most = max(self.most, self.running)
        async with self.arrived:
            self.count += 1
            self.arrived.notify_all()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": self.body})


def client_for(port: int, **limits: Any) -> httpx.AsyncClient:
    endpoint = Endpoint(
        url=f"http://127.0.0.1:{port}/inbox",
        secrets=[SECRET],
        allow_private_network=True,
        **limits,
    )
    return httpx.AsyncClient(
        transport=GuardedTransport(endpoint),
        timeout=httpx.Timeout(5.0, pool=limits.get("connect_timeout", 5.0)),
    )


async def test_requests_beyond_max_connections_wait_and_connections_are_reused() -> None:
    app = HeldApp()
    async with serve_in_process(app) as port, client_for(port, max_connections=2) as client:
        url = f"http://127.0.0.1:{port}/inbox"
        posts = [asyncio.create_task(client.post(url, content=b"{}")) for _ in range(6)]
        async with app.arrived:
            await app.arrived.wait_for(lambda: app.count >= 2)
        app.release.set()
        answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [200] * 6
    assert app.most == 2
    # Six requests over two connections: each was used again once free.
    assert len(set(app.clients)) == 2, app.clients


async def test_a_request_waits_no_longer_than_the_pool_timeout() -> None:
    app = HeldApp()
    async with (
        serve_in_process(app) as port,
        client_for(port, max_connections=1, connect_timeout=0.2) as client,
    ):
        url = f"http://127.0.0.1:{port}/inbox"
        held = asyncio.create_task(client.post(url, content=b"{}"))
        async with app.arrived:
            await app.arrived.wait_for(lambda: app.count >= 1)
        with pytest.raises(httpx.PoolTimeout):
            await client.post(url, content=b"{}")
        app.release.set()
        assert (await held).status_code == 200
        # The slot of the timed-out request was never taken: the next one goes through.
        assert (await client.post(url, content=b"{}")).status_code == 200


async def test_a_connection_whose_answer_was_not_read_is_not_used_again() -> None:
    app = HeldApp(body=b"x" * 1_000_000)
    app.release.set()
    async with serve_in_process(app) as port, client_for(port, max_connections=1) as client:
        url = f"http://127.0.0.1:{port}/inbox"
        async with client.stream("POST", url, content=b"{}") as response:
            async for _ in response.aiter_raw():
                break  # cut off: the rest of the answer is still on the wire
        answer = await client.post(url, content=b"{}")
        assert answer.status_code == 200
        assert len(answer.content) == 1_000_000
    assert len(set(app.clients)) == 2, app.clients


async def test_a_url_without_a_port_connects_to_the_schemes_default_port() -> None:
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        raise OSError("no such host here")

    for url, port in (("http://subscriber.example/in", 80), ("https://subscriber.example/in", 443)):
        endpoint = Endpoint(url=url, secrets=[SECRET])
        transport = GuardedTransport(endpoint, resolve=resolve)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.post(url, content=b"{}")
        assert asked[-1] == ("subscriber.example", port)


def endpoint_client(port: int, **limits: Any) -> EndpointClient:
    endpoint = Endpoint(
        url=f"http://127.0.0.1:{port}/inbox",
        secrets=[SECRET],
        allow_private_network=True,
        **limits,
    )
    return EndpointClient(endpoint)


async def test_endpoint_client_bounds_connections_and_uses_them_again() -> None:
    app = HeldApp()
    async with serve_in_process(app) as port:
        client = endpoint_client(port, max_connections=2)
        try:
            posts = [asyncio.create_task(client.post(b"{}", {})) for _ in range(6)]
            async with app.arrived:
                await app.arrived.wait_for(lambda: app.count >= 2)
            app.release.set()
            answers = await asyncio.gather(*posts)
        finally:
            await client.aclose()
    assert [a.status for a in answers] == [200] * 6
    assert app.most == 2
    assert len(set(app.clients)) == 2, app.clients


async def test_endpoint_client_waits_no_longer_than_the_pool_timeout() -> None:
    app = HeldApp()
    async with serve_in_process(app) as port:
        client = endpoint_client(port, max_connections=1, connect_timeout=0.2)
        try:
            held = asyncio.create_task(client.post(b"{}", {}))
            async with app.arrived:
                await app.arrived.wait_for(lambda: app.count >= 1)
            with pytest.raises(httpx.PoolTimeout):
                await client.post(b"{}", {})
            app.release.set()
            assert (await held).status == 200
            assert (await client.post(b"{}", {})).status == 200
        finally:
            await client.aclose()


async def test_endpoint_client_does_not_reuse_a_connection_whose_answer_was_cut_off() -> None:
    app = HeldApp(body=b"x" * 1_000_000)
    app.release.set()
    async with serve_in_process(app) as port:
        client = endpoint_client(port, max_connections=1)
        try:
            first = await client.post(b"{}", {})
            second = await client.post(b"{}", {})
        finally:
            await client.aclose()
    assert first.status == second.status == 200
    assert first.excerpt == b"x" * 512
    assert not first.reusable
    assert len(set(app.clients)) == 2, app.clients


async def test_endpoint_client_sends_the_headers_and_body_it_is_given() -> None:
    seen: list[tuple[dict[bytes, bytes], bytes, str]] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append((dict(scope["headers"]), body, scope["path"]))
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [(b"retry-after", b"7")],
            }
        )
        await send({"type": "http.response.body", "body": b"slow down"})

    async with serve_in_process(app) as port:
        client = endpoint_client(port)
        try:
            answer = await client.post(b'{"a":1}', {"webhook-id": "evt_1", "x-more": "yes"})
            with pytest.raises(httpx.LocalProtocolError):
                await client.post(b"{}", {"x-bad": "one\r\nx-injected: two"})
        finally:
            await client.aclose()
    assert (answer.status, answer.headers["retry-after"], answer.excerpt) == (
        429,
        "7",
        b"slow down",
    )
    [(headers, body, path)] = seen
    assert (body, path) == (b'{"a":1}', "/inbox")
    assert headers[b"webhook-id"] == b"evt_1"
    assert headers[b"x-more"] == b"yes"
    assert headers[b"host"] == f"127.0.0.1:{port}".encode()
    assert headers[b"content-length"] == b"7"


async def test_endpoint_client_connects_to_the_schemes_default_port() -> None:
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        raise OSError("no such host here")

    for url, port in (("http://subscriber.example/in", 80), ("https://subscriber.example/in", 443)):
        client = EndpointClient(Endpoint(url=url, secrets=[SECRET]), resolve=resolve)
        with pytest.raises(httpx.ConnectError):
            await client.post(b"{}", {})
        await client.aclose()
        assert asked[-1] == ("subscriber.example", port)


async def test_endpoint_client_times_out_a_silent_server_and_a_trickling_one() -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await done.wait()  # never answers
        writer.close()

    async def trickling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        # A byte now and then: never silent for read_timeout, never done.
        while not done.is_set():
            writer.write(b"x")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await done.wait()
        writer.close()

    for handler, limits, expected in (
        (silent, {"read_timeout": 0.2}, httpx.ReadTimeout),
        (trickling, {"read_timeout": 0.2, "total_timeout": 0.5}, TimeoutError),
    ):
        done.clear()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = endpoint_client(port, **limits)
        try:
            with pytest.raises(expected):
                await client.post(b"{}", {}, timeout=limits.get("total_timeout"))
        finally:
            await client.aclose()
            done.set()
            server.close()
            await server.wait_closed()


@pytest.mark.parametrize(
    ("read_timeout", "total", "expected", "says"),
    [
        (0.3, None, httpx.ReadTimeout, "no answer within"),
        (60.0, 0.3, TimeoutError, "total timeout"),
    ],
    ids=["read-timeout", "total-timeout"],
)
async def test_a_kept_alive_connection_still_times_out_a_later_silent_answer(
    read_timeout: float, total: float | None, expected: type[Exception], says: str
) -> None:
    # Answers the first requests of a connection at once, then goes silent. The timer set
    # by the earlier requests is kept on the connection: it must still end the last one
    # in time, whether its read timeout binds or a total timeout shorter than the timer.
    answered = 0
    done = asyncio.Event()

    async def then_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while await reader.read(65536):
            if answered == 3:
                await done.wait()
                break
            answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        writer.close()

    server = await asyncio.start_server(then_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = endpoint_client(port, read_timeout=read_timeout, max_connections=1)
    try:
        for _ in range(3):
            assert (await client.post(b"{}", {})).status == 200
        with pytest.raises(expected, match=says):
            # A generous guard, not a timing: a timer left at the earlier 60 s would trip
            # it, and its TimeoutError says nothing.
            async with asyncio.timeout(20.0):
                await client.post(b"{}", {}, timeout=total)
    finally:
        await client.aclose()
        done.set()
        server.close()
        await server.wait_closed()
    assert answered == 3


def test_endpoint_client_posts_on_a_uvloop_event_loop() -> None:
    """The fan-out's connections work on uvloop, whose transports are not asyncio's classes.

    An application served by ``uvicorn[standard]`` runs on uvloop; a fan-out started
    inside it (or a worker that installs uvloop) gets uvloop's TCP transports.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.fail("uvloop is not installed: pip install '.[test]' brings it")
    seen: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        seen.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> tuple[int, int, bytes]:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        async with serve_in_process(app) as port:
            client = endpoint_client(port)
            try:
                first = await asyncio.wait_for(client.post(b'{"n":1}', {}), 10)
                second = await asyncio.wait_for(client.post(b'{"n":2}', {}), 10)
            finally:
                await client.aclose()
        return first.status, second.status, first.excerpt

    assert uvloop.run(scenario()) == (200, 200, b"ok")
    assert seen == [b'{"n":1}', b'{"n":2}']
