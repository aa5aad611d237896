"""The inbox over HTTP: a FastAPI router that takes events from other services' fan-out.

Needs the ``[fastapi]`` extra (and ``[delivery]`` for :func:`serve_inbox`, which uses
uvicorn); nothing in the core imports this module::

    from fastapi import FastAPI
    from dispatch_aio.inbox import inbox_router

    app = FastAPI()
    app.include_router(inbox_router(pool, secrets=["whsec_..."]))   # POST /dispatch/inbox

The route checks ``Content-Length`` and then counts bytes as the body streams in: a body
over ``max_body_bytes`` is answered 413 before it is read whole. Everything else is
:class:`~dispatch_aio.Inbox`'s: 401 for a bad, missing or stale signature (no detail),
400 for a body that is not a JSON object, 422 naming the JSON path of an invalid
envelope or payload, 200 for an accepted or already present event_id, 503 when the
database does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ._delivery.inbox import DEFAULT_MAX_BODY_BYTES, Inbox, InboxResponse
from ._delivery.signatures import WebhookSecrets
from ._registry import Registry
from ._telemetry import Telemetry

__all__ = ["DEFAULT_INBOX_PATH", "ReceivingService", "inbox_app", "inbox_router", "serve_inbox"]

#: Where :func:`inbox_router` mounts its route unless told otherwise.
DEFAULT_INBOX_PATH = "/dispatch/inbox"


class _BodyTooLarge(Exception):
    pass


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _respond(answer: InboxResponse) -> Response:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def inbox_router(
    pool: asyncpg.Pool,
    *,
    secrets: WebhookSecrets | Iterable[str],
    registry: Registry | None = None,
    schema: str = "public",
    path: str = DEFAULT_INBOX_PATH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    telemetry: Telemetry | None = None,
) -> APIRouter:
    """A router with one route, ``POST {path}``, that feeds :class:`~dispatch_aio.Inbox`.

    Each accepted event commits in a transaction of its own before the 200 is sent; a
    request cancelled before that (client gone, server stopping) rolls back and the
    sender retries. The route is not in the OpenAPI schema.
    """
    inbox = Inbox(
        pool,
        secrets=secrets,
        registry=registry,
        schema=schema,
        max_body_bytes=max_body_bytes,
        telemetry=telemetry,
    )
    router = APIRouter()

    @router.post(path, include_in_schema=False)
    async def receive(request: Request) -> Response:
        try:
            body = await _read_limited(request, inbox.max_body_bytes)
        except _BodyTooLarge:
            answer = inbox.too_large()
            # Tell the server not to keep reading a body nobody wants.
            return _respond(
                InboxResponse(answer.status, answer.outcome, answer.body, {"connection": "close"})
            )
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        return _respond(await inbox.receive(pairs, body))

    return router


def inbox_app(pool: asyncpg.Pool, **options: Any) -> FastAPI:
    """A FastAPI application serving only :func:`inbox_router` (same options)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(inbox_router(pool, **options))
    return app


@dataclass(frozen=True, slots=True)
class ReceivingService:
    """A running inbox: its URL (``http://127.0.0.1:<port>/dispatch/inbox``) and its pool."""

    url: str
    port: int
    pool: asyncpg.Pool


@contextlib.asynccontextmanager
async def serve_inbox(
    dsn: str,
    *,
    secrets: WebhookSecrets | Iterable[str],
    host: str = "127.0.0.1",
    port: int = 0,
    pool_size: int = 20,
    **options: Any,
) -> AsyncIterator[ReceivingService]:
    """Serve an inbox for the database at ``dsn`` with uvicorn, in this event loop.

    For demos and tests: it binds ``host:port`` (port 0 picks a free one) before
    yielding, so the URL accepts connections at once; leaving the block stops the
    server (requests in flight finish) and closes the pool. The database must be
    migrated. ``pool_size`` bounds the concurrent inserts. Options are
    :func:`inbox_router`'s.
    """
    import uvicorn

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size)
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that
    # say so, and a response written in two parts would otherwise wait ~40 ms for an ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        bound = sock.getsockname()[1]
        app = inbox_app(pool, secrets=secrets, **options)
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            path = options.get("path", DEFAULT_INBOX_PATH)
            display = f"[{host}]" if ":" in host else host
            yield ReceivingService(url=f"http://{display}:{bound}{path}", port=bound, pool=pool)
        finally:
            server.should_exit = True
            await task
    finally:
        sock.close()
        await pool.close()
