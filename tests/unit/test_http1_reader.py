"""The fan-out's HTTP/1.1 answer reader: framing, interim answers, limits, bad answers."""

from __future__ import annotations

import httpx
import pytest

from dispatch_aio._delivery.http1 import MAX_HEADER_BYTES, Answer, ResponseReader


def read_whole(raw: bytes, *, step: int = 0, **options: int) -> Answer | None:
    """Feed ``raw`` at once, or ``step`` bytes at a time; the answer once complete."""
    reader = ResponseReader(**options)
    if not step:
        return reader.feed(raw)
    answer = None
    for start in range(0, len(raw), step):
        assert answer is None, "the answer completed before its last byte"
        answer = reader.feed(raw[start : start + step])
    return answer


@pytest.mark.parametrize("step", [0, 1, 7])
def test_content_length_framing_in_any_pieces(step: int) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
        b'{"ok": true }'
    )
    answer = read_whole(raw, step=step)
    assert answer == Answer(
        200, {"content-type": "application/json", "content-length": "13"}, b'{"ok": true }', True
    )


@pytest.mark.parametrize("step", [0, 1, 5])
def test_chunked_framing_with_extensions_and_trailers(step: int) -> None:
    raw = (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nbusy\r\n7\r\n, later\r\n0\r\nx-trailer: yes\r\n\r\n"
    )
    answer = read_whole(raw, step=step)
    assert answer is not None
    assert (answer.status, answer.headers["retry-after"], answer.excerpt, answer.reusable) == (
        503,
        "5",
        b"busy, later",
        True,
    )


def test_interim_answers_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    assert read_whole(raw) == Answer(204, {}, b"", True)


def test_connection_close_and_http_1_0_are_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    old_kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    assert [read_whole(raw).reusable for raw in (closing, old, old_kept)] == [  # type: ignore[union-attr]
        False,
        False,
        True,
    ]


def test_an_answer_framed_by_the_close_ends_at_eof() -> None:
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\n\r\nall of") is None
    assert reader.feed(b" it") is None
    assert reader.feed_eof() == Answer(200, {}, b"all of it", False)


def test_a_long_answer_stops_early_and_is_not_reused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 2000
    answer = read_whole(raw, excerpt_bytes=10, drain_limit=1000)
    assert answer == Answer(200, {"content-length": "100000"}, b"x" * 10, False)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"7d0\r\n" + b"y" * 2000
    answer = read_whole(chunked, excerpt_bytes=10, drain_limit=1000)
    assert answer is not None
    assert not answer.reusable
    assert answer.excerpt == b"y" * 10


def test_bytes_beyond_the_answer_make_the_connection_unusable() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n"
    answer = read_whole(raw)
    assert answer is not None
    assert not answer.reusable


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nName : value\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
    ],
)
def test_malformed_answers_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        ResponseReader().feed(raw)


def test_headers_without_end_are_bounded() -> None:
    reader = ResponseReader()
    with pytest.raises(httpx.RemoteProtocolError, match="too long"):
        reader.feed(b"HTTP/1.1 200 OK\r\n" + b"x-filler: y\r\n" * (MAX_HEADER_BYTES // 10))


def test_eof_before_the_answer_is_whole_is_a_protocol_error() -> None:
    reader = ResponseReader()
    with pytest.raises(httpx.RemoteProtocolError, match="without an answer"):
        reader.feed_eof()
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(httpx.RemoteProtocolError, match="mid-answer"):
        reader.feed_eof()


@pytest.mark.parametrize("size", [0, 1, 16, 17, 40])
@pytest.mark.parametrize("step", [0, 1, 3])
def test_a_body_longer_than_the_excerpt_is_cut_there_in_any_pieces(size: int, step: int) -> None:
    body = bytes(range(65, 65 + size))
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body
    answer = read_whole(raw, step=step, excerpt_bytes=16)
    assert answer == Answer(200, {"content-length": str(size)}, body[:16], True)


def test_a_repeated_equal_content_length_is_one_length() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok"
    assert read_whole(raw) == Answer(200, {"content-length": "2"}, b"ok", True)
