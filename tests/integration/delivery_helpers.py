"""Shared pieces of the cross-service delivery tests: envelopes, signed requests, a second
database, an inbox in a uvicorn subprocess, and a scripted subscriber served in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

from dispatch_aio import Dispatcher, Envelope, WebhookSecrets, generate_secret
from dispatch_aio.pytest_plugin import TestPostgres

from .helpers import locked_payload, uid

HERE = Path(__file__).resolve().parent
SECRET = generate_secret()
SENDER = Dispatcher(None, producer="revenue", tenant_id="tnt_sguild")


def envelope(**payload: Any) -> Envelope:
    """A valid credit.locked envelope, as the revenue service would publish it."""
    built, _ = SENDER.build(
        "credit.locked",
        locked_payload(**payload),
        subject=uid("per"),
        actor="system:revenue",
        correlation_id=uid("cor"),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    return built


def body_of(value: Envelope | dict[str, Any]) -> bytes:
    data = value.to_json_dict() if isinstance(value, Envelope) else value
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def signed(
    body: bytes, msg_id: str, *, secret: str = SECRET, timestamp: int | None = None
) -> dict[str, str]:
    headers = WebhookSecrets([secret]).sign(msg_id, body, timestamp=timestamp)
    headers["content-type"] = "application/json"
    return headers


@contextlib.asynccontextmanager
async def extra_database(server: TestPostgres) -> AsyncIterator[str]:
    """A second fresh migrated database (the receiving service's), dropped afterwards."""
    name = await server.create_database()
    try:
        yield server.dsn(name)
    finally:
        await server.drop_database(name)


async def event_rows(pool: asyncpg.Pool | asyncpg.Connection) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM dispatcher_event ORDER BY position")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class InboxProcess:
    """An inbox served by uvicorn in a subprocess (``inbox_process.py``)."""

    dsn: str
    port: int = 0
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dispatch/inbox"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "inbox_process.py"),
            self.dsn,
            "--secret",
            SECRET,
            "--port",
            str(self.port),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=30)
        assert line.startswith(b"port "), line
        self.port = int(line.split()[1])

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def inbox_process(dsn: str) -> AsyncIterator[InboxProcess]:
    server = InboxProcess(dsn)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class ScriptedSubscriber:
    """An HTTP subscriber that answers each POST from ``answers`` (then 200) and records it.

    ``answers`` holds (status, headers) pairs, used one per request in order.
    """

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    #: The client (host, port) of each request: one per TCP connection.
    clients: list[tuple[str, int]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/inbox"

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        self.clients.append(tuple(scope["client"]))
        self.bodies.append(body)
        self.received.append(json.loads(body))
        status, extra = self.answers.pop(0) if self.answers else (200, {})
        raw = [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b"{}"})


@contextlib.asynccontextmanager
async def serve_in_process(app: Any, port: int = 0) -> AsyncIterator[int]:
    """Serve an ASGI app with uvicorn in this event loop on 127.0.0.1; yield its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        sock.close()


def fanout_config(endpoints: dict[str, str], **options: Any) -> dict[str, Any]:
    """A fan-out configuration mapping: subscriber -> URL, loopback allowed, short delays."""
    settings = {
        "secrets": [SECRET],
        "allow_private_network": True,
        "retry_delays": [0.05, 0.1, 0.2],
        "connect_timeout": 2,
        "read_timeout": 5,
        "total_timeout": 10,
        **options,
    }
    return {"endpoints": {name: {"url": url, **settings} for name, url in endpoints.items()}}
