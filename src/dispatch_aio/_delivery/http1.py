"""HTTP/1.1 for fan-out: write one request, read its answer, keep the connection. Small.

Fan-out speaks one dialect of HTTP: a POST with a small JSON body and a handful of
headers, then an answer whose status, ``Retry-After`` and first bytes are all it needs.
A general client (httpx over httpcore, h11 and anyio) spent more CPU per POST than the
rest of the fan-out together; this module does that one exchange over an asyncio
protocol, with no task, stream or cancel scope per request.

:class:`ResponseReader` is pure: it is fed bytes and says when an answer is complete,
framed as RFC 9112 says (``Content-Length``, chunked, or until the server closes; none
for 1xx, 204 and 304). Interim 1xx answers are skipped. An answer longer than
``drain_limit`` is not read to its end: the reader stops early and the connection is
closed instead of being used again. :class:`Connection` drives it over a transport; its
failures are httpx's transport exceptions (ReadTimeout, RemoteProtocolError, ...), the
names operators already see in dead letters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import httpx

__all__ = ["Answer", "Connection", "ResponseReader"]

#: The longest header block accepted (status line and headers).
MAX_HEADER_BYTES = 64 * 1024
_NO_BODY = (204, 304)


@dataclass(frozen=True, slots=True)
class Answer:
    """A subscriber's answer: status, headers (lower-case names, first wins), first bytes.

    ``reusable`` is False when the connection must be closed after it (the server said
    so, the body was cut off, or it was framed by the connection's end).
    """

    status: int
    headers: dict[str, str]
    excerpt: bytes
    reusable: bool


class ResponseReader:
    """Parses one HTTP/1.1 answer from the bytes fed to it. Pure, no I/O."""

    __slots__ = (
        "_body_left",
        "_buffer",
        "_chunked",
        "_excerpt",
        "_excerpt_bytes",
        "_headers",
        "_keep_alive",
        "_read",
        "_status",
        "_until_close",
        "drain_limit",
    )

    def __init__(self, *, excerpt_bytes: int = 512, drain_limit: int = 64 * 1024) -> None:
        self._excerpt_bytes = excerpt_bytes
        self.drain_limit = drain_limit
        self._buffer = bytearray()
        self._status = 0  # 0 until the headers are read
        self._headers: dict[str, str] = {}
        self._keep_alive = True
        self._chunked = False
        self._until_close = False
        self._body_left = 0  # Content-Length bytes still to come, or of the current chunk
        self._excerpt = bytearray()
        self._read = 0

    @property
    def started(self) -> bool:
        """True once any byte of the answer has been fed."""
        return bool(self._buffer) or self._status != 0 or self._read > 0

    def feed(self, data: bytes) -> Answer | None:
        """Take ``data``; return the answer once complete. Raises RemoteProtocolError."""
        self._buffer += data
        if self._status == 0 and not self._read_head():
            return None
        return self._read_body()

    def feed_eof(self) -> Answer:
        """The server closed: the answer, if the close ends it; else RemoteProtocolError."""
        if self._status != 0 and self._until_close:
            self._take(len(self._buffer))
            return self._answer(reusable=False)
        if self.started:
            raise httpx.RemoteProtocolError("the server closed the connection mid-answer")
        raise httpx.RemoteProtocolError("the server closed the connection without an answer")

    # -- parsing ------------------------------------------------------------------------

    def _read_head(self) -> bool:
        while True:
            buffer = self._buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise httpx.RemoteProtocolError("the answer's headers are too long")
                return False
            if end > MAX_HEADER_BYTES:
                raise httpx.RemoteProtocolError("the answer's headers are too long")
            head = buffer[:end].decode("latin-1")
            del buffer[: end + 4]
            status_line, _, fields = head.partition("\r\n")
            version, _, rest = status_line.partition(" ")
            code = rest[:3]
            if (
                version not in ("HTTP/1.1", "HTTP/1.0")
                or len(code) != 3
                or not code.isdigit()
                or rest[3:4] not in ("", " ")
            ):
                raise httpx.RemoteProtocolError(
                    f"not an HTTP/1.1 status line: {status_line[:80]!r}"
                )
            status = int(code)
            headers: dict[str, str] = {}
            length: str | None = None
            codings = ""
            connection = ""
            for line in fields.split("\r\n") if fields else ():
                name, colon, value = line.partition(":")
                if not colon or not name or name != name.strip() or " " in name:
                    raise httpx.RemoteProtocolError(f"malformed header line: {line[:80]!r}")
                name = name.lower()
                value = value.strip(" \t")
                if name not in headers:
                    headers[name] = value
                # Only the framing headers need more than the first value.
                if name[0] not in "ct":
                    continue
                if name == "content-length":
                    if length is not None and length != value:
                        raise httpx.RemoteProtocolError("conflicting Content-Length headers")
                    length = value
                elif name == "transfer-encoding":
                    codings += "," + value.lower()
                elif name == "connection":
                    connection += "," + value.lower()
            if 100 <= status < 200:
                continue  # interim answer (100 Continue, 103 Early Hints): the real one follows
            self._status = status
            self._headers = headers
            if connection:
                tokens = {token.strip() for token in connection.split(",")}
                self._keep_alive = (
                    "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
                )
            else:
                self._keep_alive = version != "HTTP/1.0"
            if status in _NO_BODY:
                self._body_left = 0
            elif codings:
                if codings.rsplit(",", 1)[-1].strip() != "chunked":
                    # Framed by the connection's end (RFC 9112 6.3).
                    self._until_close = True
                else:
                    self._chunked = True
                    self._body_left = -1  # before a chunk-size line
            elif length is not None:
                if not length.isascii() or not length.isdigit() or len(length) > 18:
                    raise httpx.RemoteProtocolError(f"malformed Content-Length {length[:20]!r}")
                self._body_left = int(length)
            else:
                self._until_close = True
            return True

    def _read_body(self) -> Answer | None:
        buffer = self._buffer
        if self._until_close:
            self._take(len(buffer))
            return self._answer(reusable=False) if self._read > self.drain_limit else None
        if not self._chunked:
            if self._read == 0 and len(buffer) == self._body_left <= self._excerpt_bytes:
                # The whole body at once, short enough to keep whole (nearly every answer).
                self._read = len(buffer)
                self._body_left = 0
                excerpt = bytes(buffer)
                buffer.clear()
                return Answer(self._status, self._headers, excerpt, self._keep_alive)
            self._take(min(self._body_left, len(buffer)), count=True)
            if self._body_left == 0:
                # Bytes after the answer are not allowed: no request is pipelined.
                return self._answer(reusable=self._keep_alive and not buffer)
            return self._answer(reusable=False) if self._read > self.drain_limit else None
        while True:
            if self._body_left == -1:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 1024:
                        raise httpx.RemoteProtocolError("malformed chunk size line")
                    return None
                size = bytes(buffer[:end]).split(b";", 1)[0].strip()
                del buffer[: end + 2]
                try:
                    if not size or len(size) > 16:
                        raise ValueError
                    self._body_left = int(size, 16)
                except ValueError:
                    raise httpx.RemoteProtocolError("malformed chunk size line") from None
                if self._body_left == 0:
                    self._body_left = -2  # trailers follow
                    continue
            if self._body_left == -2:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return None
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if not line:
                    return self._answer(reusable=self._keep_alive and not buffer)
                continue  # a trailer field: ignored
            take = min(self._body_left, len(buffer))
            self._take(take, count=True)
            if self._read > self.drain_limit:
                return self._answer(reusable=False)
            if self._body_left > 0:
                return None
            if len(buffer) < 2:
                return None
            if buffer[:2] != b"\r\n":
                raise httpx.RemoteProtocolError("a chunk does not end with CRLF")
            del buffer[:2]
            self._body_left = -1

    def _take(self, size: int, *, count: bool = False) -> None:
        if size <= 0:
            return
        room = self._excerpt_bytes - len(self._excerpt)
        if room > 0:
            self._excerpt += self._buffer[: min(room, size)]
        del self._buffer[:size]
        self._read += size
        if count:
            self._body_left -= size

    def _answer(self, *, reusable: bool) -> Answer:
        return Answer(self._status, self._headers, bytes(self._excerpt), reusable)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, answers read whole."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._reader: ResponseReader | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._closed = False
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout = 0.0
        self._deadline: float | None = None
        #: When the connection went back to the pool (loop time).
        self.idle_since = 0.0
        #: Requests answered on this connection.
        self.answered = 0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, whatever its class: uvloop's (an application served by
        # uvicorn[standard] runs on it) are not subclasses of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader, waiter = self._reader, self._waiter
        if reader is None or waiter is None or waiter.done():
            # Bytes nobody asked for: the connection can no longer be trusted.
            self.close()
            return
        self._last_data = self._loop.time()
        try:
            answer = reader.feed(data)
        except httpx.RemoteProtocolError as exc:
            self._finish(exc)
            return
        if answer is not None:
            self._finish(answer)

    def eof_received(self) -> bool:
        reader, waiter = self._reader, self._waiter
        if reader is not None and waiter is not None and not waiter.done():
            try:
                self._finish(reader.feed_eof())
            except httpx.RemoteProtocolError as exc:
                self._finish(exc)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            reader = self._reader
            if exc is None and reader is not None:
                try:
                    self._finish(reader.feed_eof())
                    return
                except httpx.RemoteProtocolError as error:
                    self._finish(error)
                    return
            self._finish(httpx.ReadError(f"the connection was lost: {exc}"))

    # -- use ---------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """True when idle and open (the server has not closed its end)."""
        transport = self.transport
        return (
            not self._closed
            and self._waiter is None
            and transport is not None
            and not transport.is_closing()
        )

    @property
    def heard_back(self) -> bool:
        """True when the last request got any byte of an answer."""
        return self._reader is not None and self._reader.started

    async def request(
        self,
        data: bytes,
        *,
        read_timeout: float,
        excerpt_bytes: int,
        drain_limit: int,
        deadline: float | None = None,
    ) -> Answer:
        """Send ``data`` (a whole request) and wait for the answer.

        ``read_timeout``: the longest silence from the server (ReadTimeout); ``deadline``
        (loop time): when to give up however the answer trickles in (TimeoutError). One
        timer serves both. A request that fails or is cancelled closes the connection.
        Raises httpx's ReadTimeout, ReadError, RemoteProtocolError; TimeoutError.
        """
        transport = self.transport
        if transport is None or not self.usable:
            raise httpx.ReadError("the connection is closed")
        loop = self._loop
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiter = waiter
        self._reader = ResponseReader(excerpt_bytes=excerpt_bytes, drain_limit=drain_limit)
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._last_data = loop.time()
        due = self._due()
        timer = self._timer
        # The timer of an earlier request is kept while it is due no later than this
        # one's limit: firing early, it finds the new limit and sets itself again. So a
        # busy connection sets one timer per read_timeout, not one per request.
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(due, self._check_silence)
        try:
            transport.write(data)
            answer = await waiter
        except BaseException:
            self.close()
            raise
        self._waiter = None
        self.answered += 1
        if not answer.reusable:
            self.close()
        return answer

    def close(self) -> None:
        """Close the connection (a request waiting on it fails)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(httpx.ReadError("the connection was closed"))

    def _check_silence(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        due = self._due()
        now = self._loop.time()
        if now < due:
            self._timer = self._loop.call_at(due, self._check_silence)
            return
        if self._deadline is not None and now >= self._deadline:
            self._finish(TimeoutError("the POST took longer than its total timeout"))
            return
        self._finish(httpx.ReadTimeout(f"no answer within {self._read_timeout:g}s"))

    def _due(self) -> float:
        due = self._last_data + self._read_timeout
        deadline = self._deadline
        return due if deadline is None or deadline > due else deadline

    def _finish(self, outcome: Answer | Exception) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Answer):
            waiter.set_result(outcome)
        else:
            waiter.set_exception(outcome)
