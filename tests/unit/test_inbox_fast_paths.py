"""The inbox's fast paths give what the general ones give: body parsing, the 200 answer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import to_json

from dispatch_aio._delivery.inbox import InboxResponse, _Malformed, _parse
from dispatch_aio._delivery.inbox_http import _answer

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(document=st.dictionaries(_TEXT, _VALUES, max_size=6))
def test_compact_and_spaced_bodies_give_what_json_loads_gives(document: dict[str, Any]) -> None:
    spellings = (json.dumps(document), json.dumps(document, indent=1))
    for body in (to_json(document), *(text.encode() for text in spellings)):
        data, text = _parse(body)
        assert data == json.loads(body)
        assert text == body.decode()


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":1,"a":2}',  # compact, as fan-out writes: the fast path must not keep one
        b'{"a":{"b":1,"b":1}}',
        b'{"a":1, "a":1}',
        b'{"x":NaN}',
        b'{"x":Infinity}',
        b'{"x":-Infinity}',
        b'{"a":1}{"a":1}',
        b"[" * 30_000 + b"]" * 30_000,
        b"\xff",
    ],
)
def test_what_strict_json_refuses_is_refused(body: bytes) -> None:
    with pytest.raises(_Malformed):
        _parse(body)


async def sent(answer: InboxResponse) -> tuple[int, dict[bytes, bytes], bytes]:
    messages: list[Any] = []

    async def send(message: Any) -> None:
        messages.append(message)

    await _answer(send, answer)
    start, body = messages
    assert body["type"] == "http.response.body"
    return start["status"], dict(start["headers"]), body["body"]


@pytest.mark.anyio
@pytest.mark.parametrize("outcome", ["accepted", "duplicate"])
@pytest.mark.parametrize("event_id", ["evt_0192f1a0-0000-7000-8000-000000000001", 'a"b', "a\\b"])
async def test_the_200_answer_is_the_json_of_its_body(outcome: str, event_id: str) -> None:
    answer = InboxResponse(200, outcome, {"status": outcome, "event_id": event_id})
    status, headers, content = await sent(answer)
    assert status == 200
    assert json.loads(content) == answer.body
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(content)).encode()
