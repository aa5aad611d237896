"""One write per answer: the inbox server's transport joins what one loop turn writes.

uvicorn writes an answer's status line and headers as soon as the application sends
``http.response.start``, then its body in a second write: two system calls and two
TCP segments for a few dozen bytes, and on the sender's side often two wake-ups and
two reads for one answer. Over loopback, where every write costs the kernel both
ends' work, that second write was one of the inbox's largest costs per event.

:func:`coalescing_protocol` subclasses the HTTP protocol class uvicorn would use so
that its connections write through a :class:`CoalescingTransport`: writes made in one
turn of the event loop go out together, in one write, at the end of that turn. The
protocol's own logic is untouched; only ``serve_inbox`` uses it.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CoalescingTransport", "coalescing_protocol"]


class CoalescingTransport:
    """Wraps a transport: ``write`` calls in one loop turn become one write.

    Everything else is the wrapped transport's. ``close`` writes what is pending first;
    ``abort`` drops it, as it drops the transport's own buffer.
    """

    __slots__ = ("_loop", "_pending", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write what is pending now (nothing once the transport is closing)."""
        pending, self._pending = self._pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def coalescing_protocol(protocol_class: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """A subclass of ``protocol_class`` whose connections write through CoalescingTransport."""

    class Coalescing(protocol_class):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]

    Coalescing.__name__ = Coalescing.__qualname__ = f"Coalescing{protocol_class.__name__}"
    return Coalescing
