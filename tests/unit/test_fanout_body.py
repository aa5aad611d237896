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
from dispatch_aio._codec import event_from_row
from dispatch_aio._consume._codec import StoredEvent, occurred_at_text, parse_payload
from dispatch_aio._delivery.fanout import envelope_json, stored_envelope_json

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


# -- the body of an event forwarded as stored (what the fan-out's handler gets) ---------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stored_row(micros: int, payload: dict[str, Any], **optional: str) -> dict[str, Any]:
    """A row as the consumer's read returns it (the payload as its JSON text)."""
    return {
        "event_id": "evt_1",
        "event_type": "credit.locked",
        "schema_version": 1,
        "tenant_id": "tnt_1",
        "producer": "revenue",
        "subject": "per_1",
        "actor": "system:revenue",
        "correlation_id": optional.get("correlation_id"),
        "causation_id": optional.get("causation_id"),
        "traceparent": optional.get("traceparent"),
        "occurred_us": micros,
        "payload": json.dumps(payload),
        "position": 1,
    }


def both_bodies(row: dict[str, Any]) -> tuple[bytes, bytes]:
    """The body sent for ``row`` as stored, and for the Event a handler would get."""
    payload = parse_payload(row["payload"])
    stored = StoredEvent(row, payload, occurred_at_text(row["occurred_us"]), 1)
    return stored_envelope_json(stored), envelope_json(event_from_row(row, payload))


def micros_of(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 5, 9, 19, 0, tzinfo=UTC),  # no microseconds: still six digits
        datetime(2026, 5, 9, 19, 0, 0, 123456, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a three-digit year keeps four
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before 1970
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
@pytest.mark.parametrize("optional", [{}, _OPTIONAL], ids=["bare", "all-optional"])
def test_a_stored_events_body_is_the_bytes_of_its_events_body(
    when: datetime, optional: dict[str, str]
) -> None:
    stored, built = both_bodies(stored_row(micros_of(when), {"n": 1, "s": 'é\\u2028"'}, **optional))
    assert stored == built
    document = json.loads(stored)
    assert {key for key in _OPTIONAL if key in document} == set(optional)  # unset: left out


@pytest.mark.parametrize("key", sorted(_OPTIONAL))
def test_each_optional_field_is_sent_alone_when_only_it_is_set(key: str) -> None:
    row = stored_row(micros_of(datetime(2026, 5, 9, tzinfo=UTC)), {}, **{key: _OPTIONAL[key]})
    stored, built = both_bodies(row)
    assert stored == built
    assert json.loads(stored)[key] == _OPTIONAL[key]


@settings(max_examples=300, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=6),
    when=st.datetimes(timezones=st.just(UTC)),
)
def test_any_stored_event_gives_the_bytes_of_its_event(
    payload: dict[str, Any], when: datetime
) -> None:
    stored, built = both_bodies(stored_row(micros_of(when), payload, **_OPTIONAL))
    assert stored == built


def test_a_stored_non_finite_number_is_refused_as_before() -> None:
    # jsonb holds no NaN, but a number too big for a float parses as infinity.
    row = stored_row(0, {})
    row["payload"] = '{"n": 1e400}'
    payload = parse_payload(row["payload"])
    with pytest.raises(ValueError, match="JSON compliant"):
        stored_envelope_json(StoredEvent(row, payload, occurred_at_text(0), 1))
