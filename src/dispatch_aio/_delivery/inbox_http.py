"""The inbox as a plain ASGI application: no framework between the server and the Inbox.

A POST carries one event and its answer is a few bytes of JSON; a framework's routing,
middleware, request object and dependency resolution cost more CPU than verifying,
validating and inserting the event. :class:`InboxEndpoint` does the one route itself
and is used two ways: served alone (``dispatch_aio.inbox.inbox_asgi``, which
``serve_inbox`` runs), and mounted as the endpoint of ``inbox_router``'s route in a
FastAPI application, so both answer exactly alike.

The body limit holds while the body streams in: a declared ``Content-Length`` over
the limit is answered 413 at once, and so is a body that grows past it; either way
the connection is closed rather than the rest read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .inbox import Inbox, InboxResponse

__all__ = ["InboxEndpoint"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The request headers the inbox reads; the others are never decoded.
_WANTED = frozenset((b"webhook-id", b"webhook-timestamp", b"webhook-signature", b"traceparent"))
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_JSON = (b"content-type", b"application/json")


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class InboxEndpoint:
    """An ASGI application feeding :class:`Inbox`: POST only; 404 off ``path`` when given.

    ``path=None`` answers whatever path it is mounted at (inside a router). Lifespan
    messages are acknowledged, so any ASGI server can run it alone. A client that goes
    away mid-body gets no answer and nothing is stored.
    """

    __slots__ = ("inbox", "path")

    def __init__(self, inbox: Inbox, *, path: str | None = None) -> None:
        self.inbox = inbox
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        if self.path is not None and scope["path"] != self.path:
            await _send_json(send, 404, {"detail": "Not Found"})
            return
        if scope["method"] != "POST":
            await _send_json(send, 405, {"detail": "Method Not Allowed"}, [(b"allow", b"POST")])
            return
        inbox = self.inbox
        pairs: list[tuple[str, str]] = []
        declared: bytes | None = None
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.lower()
            if name in _WANTED:
                pairs.append((name.decode("latin-1"), raw_value.decode("latin-1")))
            elif name == b"content-length":
                declared = raw_value
        try:
            body = await _read_limited(receive, declared, inbox.max_body_bytes)
        except _BodyTooLarge:
            answer = inbox.too_large()
            # Tell the server not to keep reading a body nobody wants.
            await _answer(send, answer, [(b"connection", b"close")])
            return
        except _Disconnected:
            return
        await _answer(send, await inbox.receive(pairs, body))


async def _read_limited(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _BodyTooLarge
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _BodyTooLarge
        return body
    chunks = [body]
    size = len(body)
    while True:
        if size > limit:
            raise _BodyTooLarge
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if size > limit:
        raise _BodyTooLarge
    return b"".join(chunks)


async def _answer(
    send: Send, answer: InboxResponse, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = answer.body
    if answer.status == 200 and not answer.headers and not extra:
        # The answer to nearly every request: {"status": ..., "event_id": ...}. The id is
        # the verified webhook-id, printable ASCII: written straight in unless it holds
        # one of the two characters JSON escapes there.
        event_id: str = body["event_id"]
        if '"' not in event_id and "\\" not in event_id and len(body) == 2:
            content = b'{"status":"%s","event_id":"%s"}' % (
                body["status"].encode("ascii"),
                event_id.encode("ascii"),
            )
            await _send(send, 200, content, [])
            return
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    if extra:
        headers.extend(extra)
    await _send_json(send, answer.status, body, headers)


async def _send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await _send(send, status, _dumps(body).encode(), headers or [])


async def _send(
    send: Send, status: int, content: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", b"%d" % len(content)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
