"""The fan-out's POST body: the envelope's JSON document, whatever the event carries."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dispatch_aio import Event
from dispatch_aio._delivery.fanout import envelope_json

_OPTIONAL = {"correlation_id": "cor_1", "causation_id": "evt_0", "traceparent": "00-ab-cd-01"}


def event(occurred_at: datetime, payload: Any = None, **optional: Any) -> Event[Any]:
    return Event[Any].model_construct(
        event_id="evt_1",
        event_type="credit.locked",
        schema_version=1,
        occurred_at=occurred_at,
        tenant_id="tnt_1",
        producer="revenue",
        subject="per_1",
        actor="system:revenue",
        payload={"n": 1, "s": 'é\\u2028"'} if payload is None else payload,
        correlation_id=optional.get("correlation_id"),
        causation_id=optional.get("causation_id"),
        traceparent=optional.get("traceparent"),
        position=1,
        attempt=1,
    )


def reference(value: Event[Any]) -> bytes:
    return json.dumps(
        value.to_json_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode()


class Locked(BaseModel):
    credits: int


@pytest.mark.parametrize(
    "occurred_at",
    [
        datetime(2026, 5, 9, 19, 0, tzinfo=UTC),  # no microseconds: still six digits
        datetime(2026, 5, 9, 19, 0, 0, 123456, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a three-digit year keeps four
        datetime(2026, 5, 9, 21, 0, tzinfo=timezone(timedelta(hours=2))),  # converted
        datetime(2026, 5, 9, 19, 0, tzinfo=timezone.utc),  # noqa: UP017 (the same object)
    ],
)
@pytest.mark.parametrize("optional", [{}, _OPTIONAL], ids=["bare", "all-optional"])
def test_the_body_is_the_envelopes_json_document(
    occurred_at: datetime, optional: dict[str, str]
) -> None:
    value = event(occurred_at, **optional)
    assert envelope_json(value) == reference(value)


def test_a_model_payload_is_sent_as_its_json_data() -> None:
    value = event(datetime(2026, 5, 9, tzinfo=UTC), Locked(credits=3))
    assert envelope_json(value) == reference(value)
    assert json.loads(envelope_json(value))["payload"] == {"credits": 3}


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=6))
def test_any_json_payload_gives_the_standard_encoders_bytes(payload: dict[str, Any]) -> None:
    # Escapes, non-ASCII text, big integers: the same bytes as the standard library's
    # encoder, so the receiver sees the document it always saw.
    value = event(datetime(2026, 5, 9, tzinfo=UTC), payload)
    assert envelope_json(value) == reference(value)


@settings(max_examples=300, deadline=None)
@given(number=st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_is_sent_as_the_same_number(number: float) -> None:
    # Exponents may be spelt with fewer digits (1e-8, not 1e-08): the same number.
    value = event(datetime(2026, 5, 9, tzinfo=UTC), {"x": number, "l": [number]})
    assert json.loads(envelope_json(value)) == json.loads(reference(value))


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_non_finite_float_is_refused_as_before(number: float) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        envelope_json(event(datetime(2026, 5, 9, tzinfo=UTC), {"n": number}))


def test_the_words_nan_and_infinity_inside_text_are_sent_as_text() -> None:
    value = event(datetime(2026, 5, 9, tzinfo=UTC), {"s": "NaN and Infinity"})
    assert envelope_json(value) == reference(value)
