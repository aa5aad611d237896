"""The inbox over HTTP: a FastAPI router that takes events from other services' fan-out.

Needs the ``[fastapi]`` extra (and ``[delivery]`` for :func:`serve_inbox`, which uses
uvicorn); nothing in the core imports this module::

    from fastapi import FastAPI
    from dispatch_aio.inbox import inbox_router

    app = FastAPI()
    app.include_router(inbox_router(pool, secrets=["whsec_..."]))   # POST /dispatch/inbox

A service that only receives can serve :func:`inbox_asgi` instead: the same route as a
plain ASGI application, without FastAPI's per-request work (what :func:`serve_inbox`
runs). The route checks ``Content-Length`` and then counts bytes as the body streams in: a body
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
from fastapi import APIRouter, FastAPI
from starlette.routing import Route

from ._delivery.inbox import DEFAULT_MAX_BODY_BYTES, Inbox
from ._delivery.inbox_http import InboxEndpoint
from ._delivery.signatures import WebhookSecrets
from ._registry import Registry
from ._telemetry import Telemetry

__all__ = [
    "DEFAULT_INBOX_PATH",
    "InboxEndpoint",
    "ReceivingService",
    "inbox_app",
    "inbox_asgi",
    "inbox_router",
    "serve_inbox",
]

#: Where :func:`inbox_router` mounts its route unless told otherwise.
DEFAULT_INBOX_PATH = "/dispatch/inbox"


def _make_inbox(
    pool: asyncpg.Pool,
    *,
    secrets: WebhookSecrets | Iterable[str],
    registry: Registry | None,
    schema: str,
    max_body_bytes: int,
    telemetry: Telemetry | None,
) -> Inbox:
    return Inbox(
        pool,
        secrets=secrets,
        registry=registry,
        schema=schema,
        max_body_bytes=max_body_bytes,
        telemetry=telemetry,
    )


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

    The route's endpoint is the plain ASGI application of :func:`inbox_asgi` (no
    request object, no dependencies: the same answers, for less CPU). Each accepted
    event's row is committed before the 200 is sent; a request cancelled before that
    (client gone, server stopping) may still have its row committed, and the sender's
    retry then answers 200 with no second row. The route is not in the OpenAPI schema.
    """
    inbox = _make_inbox(
        pool,
        secrets=secrets,
        registry=registry,
        schema=schema,
        max_body_bytes=max_body_bytes,
        telemetry=telemetry,
    )
    router = APIRouter()
    # Starlette runs an endpoint that is not a function as an ASGI application.
    router.routes.append(
        Route(path, InboxEndpoint(inbox), methods=["POST"], include_in_schema=False)
    )
    return router


def inbox_asgi(
    pool: asyncpg.Pool,
    *,
    secrets: WebhookSecrets | Iterable[str],
    registry: Registry | None = None,
    schema: str = "public",
    path: str = DEFAULT_INBOX_PATH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    telemetry: Telemetry | None = None,
) -> InboxEndpoint:
    """The inbox as a plain ASGI application: ``POST {path}``, 404 elsewhere, 405 for others.

    What :func:`serve_inbox` runs; any ASGI server can (``uvicorn module:app``). Same
    options and answers as :func:`inbox_router`, without FastAPI in between.
    """
    inbox = _make_inbox(
        pool,
        secrets=secrets,
        registry=registry,
        schema=schema,
        max_body_bytes=max_body_bytes,
        telemetry=telemetry,
    )
    return InboxEndpoint(inbox, path=path)


def inbox_app(pool: asyncpg.Pool, **options: Any) -> FastAPI:
    """A FastAPI application serving only :func:`inbox_router` (same options)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(inbox_router(pool, **options))
    return app


@dataclass(frozen=True, slots=True)
class ReceivingService:
    """A running inbox: its URL (``http://127.0.0.1:<port>/dispatch/inbox``) and its pool.

    ``http_parser`` names the HTTP/1.1 implementation uvicorn chose: ``httptools`` when
    that package is installed (as ``uvicorn[standard]`` installs it), else ``h11``.
    """

    url: str
    port: int
    pool: asyncpg.Pool
    http_parser: str = "h11"


def _parser_name(config: Any) -> str:
    """``httptools`` or ``h11``: which protocol class uvicorn loaded for ``http="auto"``."""
    protocol = getattr(config, "http_protocol_class", None)
    modules = [getattr(cls, "__module__", "") for cls in getattr(protocol, "__mro__", ())]
    for name in ("httptools", "h11"):
        if any(name in module for module in modules):
            return name
    return modules[0] if modules else ""


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
    :func:`inbox_router`'s. uvicorn's own parser choice is kept (httptools when
    installed), with each answer written in one piece (``_delivery.coalesce``); the
    event loop is the caller's (uvloop, if the caller started one).
    """
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from ._delivery.coalesce import coalescing_protocol

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
        app = inbox_asgi(pool, secrets=secrets, **options)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                access_log=False,
                # The inbox never reads the client's address: no forwarded-header layer.
                proxy_headers=False,
                # No "server: uvicorn" on every answer: bytes to write and to parse, and
                # it tells a caller only what software to probe.
                server_header=False,
                # The parser uvicorn would pick, writing each answer in one piece.
                http=coalescing_protocol(AutoHTTPProtocol),
            )
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            path = options.get("path", DEFAULT_INBOX_PATH)
            display = f"[{host}]" if ":" in host else host
            yield ReceivingService(
                url=f"http://{display}:{bound}{path}",
                port=bound,
                pool=pool,
                http_parser=_parser_name(server.config),
            )
        finally:
            server.should_exit = True
            await task
    finally:
        sock.close()
        await pool.close()
