"""The inbox server's transport: what one loop turn writes goes out in one write."""

from __future__ import annotations

import asyncio

import pytest

from dispatch_aio._delivery.coalesce import CoalescingTransport, coalescing_protocol

pytestmark = pytest.mark.anyio


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_of_one_turn_go_out_as_one() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(bytearray(b"{}"))
    assert inner.writes == []
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"next"]


async def test_close_writes_what_is_pending_first_and_abort_drops_it() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner)  # type: ignore[arg-type]
    transport.write(b"answer")
    transport.close()
    assert (inner.writes, inner.closed) == ([b"answer"], True)
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert inner.writes == [b"answer"]

    inner = RecordingTransport()
    transport = CoalescingTransport(inner)  # type: ignore[arg-type]
    transport.write(b"answer")
    transport.abort()
    await asyncio.sleep(0)
    assert (inner.writes, inner.aborted) == ([], True)


async def test_nothing_is_written_to_a_closing_transport() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner)  # type: ignore[arg-type]
    transport.write(b"late")
    inner.closed = True  # the peer went away meanwhile
    await asyncio.sleep(0)
    assert inner.writes == []


async def test_everything_else_is_the_wrapped_transports() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner)  # type: ignore[arg-type]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
    assert transport.is_closing() is False


async def test_the_protocol_subclass_hands_its_connections_the_wrapper() -> None:
    seen: list[object] = []

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen.append(transport)

    coalescing = coalescing_protocol(Protocol)
    assert issubclass(coalescing, Protocol)
    inner = RecordingTransport()
    coalescing().connection_made(inner)  # type: ignore[arg-type]
    assert isinstance(seen[0], CoalescingTransport)
    assert seen[0].transport is inner
