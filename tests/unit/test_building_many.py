"""publish_many's batch loop: the same envelopes, rows and errors as building one by one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dispatch_aio import (
    Dispatcher,
    Envelope,
    InvalidEnvelopeError,
    InvalidPayloadError,
    PayloadTooLargeError,
    Registry,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
    UsageError,
)
from dispatch_aio._contracts import batch
from dispatch_aio._ids import new_id

ACTOR = "system:tests"
EXAMPLE = Registry.load().example_payload("credit.locked")
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def spec(registry: Registry, **changes: Any) -> dict[str, Any]:
    given: dict[str, Any] = {
        "event_type": "credit.locked",
        "payload": registry.example_payload("credit.locked"),
        "subject": new_id("per"),
        "actor": ACTOR,
    }
    given.update(changes)
    return given


class Counting:
    """The whole way, counted: how many events the batch loop did not build itself."""

    def __init__(self, dispatcher: Dispatcher, traceparent: str | None) -> None:
        self.dispatcher = dispatcher
        self.traceparent = traceparent
        self.calls = 0

    def __call__(self, event: Any) -> tuple[Envelope, tuple[Any, ...]]:
        self.calls += 1
        return self.dispatcher._build_spec(event, self.traceparent)


def build_many(
    dispatcher: Dispatcher, events: list[Any], traceparent: str | None = None
) -> tuple[list[Envelope], list[tuple[Any, ...]], int]:
    whole_way = Counting(dispatcher, traceparent)
    envelopes, rows = batch.build_many(dispatcher._builder, events, traceparent, whole_way)
    return envelopes, rows, whole_way.calls


def one_by_one(
    dispatcher: Dispatcher, events: list[Any], traceparent: str | None = None
) -> list[tuple[Envelope, tuple[Any, ...]]]:
    return [dispatcher._build_spec(event, traceparent) for event in events]


def same_but_generated(envelope: Envelope, expected: Envelope) -> None:
    """Equal in everything but the two values made per event (id and time)."""
    fresh = {"event_id": envelope.event_id, "occurred_at": envelope.occurred_at}
    assert envelope == expected.model_copy(update=fresh)
    assert envelope.model_fields_set == expected.model_fields_set
    assert [type(value) for value in envelope.__dict__.values()] == [
        type(value) for value in expected.__dict__.values()
    ]
    assert list(envelope.__dict__) == list(expected.__dict__)
    assert envelope.model_dump_json(exclude_unset=True) == expected.model_copy(
        update=fresh
    ).model_dump_json(exclude_unset=True)


@pytest.mark.parametrize(
    ("optional", "traceparent"),
    [
        ({}, None),
        ({"correlation_id": "req-1"}, None),
        ({"causation_id": "evt_1"}, TRACE),
        ({"correlation_id": "req-1", "causation_id": "evt_1", "schema_version": 1}, TRACE),
    ],
)
def test_the_batch_loop_builds_what_building_one_by_one_builds(
    dispatcher: Dispatcher, registry: Registry, optional: dict[str, Any], traceparent: str | None
) -> None:
    events = [spec(registry, **optional) for _ in range(5)]
    envelopes, rows, whole_way = build_many(dispatcher, events, traceparent)
    assert whole_way == 1  # only the first of its kind is checked whole
    expected = one_by_one(dispatcher, events, traceparent)
    assert len(envelopes) == len(rows) == len(expected)
    for envelope, row, (want_envelope, want_row) in zip(envelopes, rows, expected, strict=True):
        same_but_generated(envelope, want_envelope)
        assert row[0] == envelope.event_id
        assert row[7] is envelope.occurred_at
        assert row[1:7] == want_row[1:7]
        assert row[8:] == want_row[8:]
        assert [type(value) for value in row] == [type(value) for value in want_row]
    assert len({envelope.event_id for envelope in envelopes}) == len(envelopes)


def test_the_payload_is_copied_not_shared(dispatcher: Dispatcher, registry: Registry) -> None:
    events = [spec(registry) for _ in range(3)]
    envelopes, _, _ = build_many(dispatcher, events)
    for envelope, event in zip(envelopes, events, strict=True):
        assert envelope.payload == event["payload"]
        assert envelope.payload is not event["payload"]


@pytest.mark.parametrize(
    "unusual",
    [
        {"occurred_at": None},
        {"occurred_at": datetime(2026, 5, 9, 19, 0, tzinfo=UTC)},
        {"subject": type("Text", (str,), {})(new_id("per"))},
        {"payload": type("Payload", (dict,), {})(EXAMPLE)},
    ],
)
def test_unusual_events_take_the_whole_way(
    dispatcher: Dispatcher, registry: Registry, unusual: dict[str, Any]
) -> None:
    events = [spec(registry), spec(registry, **unusual), spec(registry)]
    envelopes, _, whole_way = build_many(dispatcher, events)
    assert whole_way == 2
    same_but_generated(envelopes[1], dispatcher._build_spec(events[1], None)[0])


@pytest.mark.parametrize(
    ("bad", "error", "path"),
    [
        ({"subject": "per_not-an-id"}, InvalidEnvelopeError, "$.subject"),
        ({"actor": "nobody"}, InvalidEnvelopeError, "$.actor"),
        ({"correlation_id": "has space"}, InvalidEnvelopeError, "$.correlation_id"),
        ({"causation_id": ""}, InvalidEnvelopeError, "$.causation_id"),
        ({"payload": {"locked_credits": 0}}, InvalidPayloadError, "$.payload"),
        ({"payload": {"x": "\x00"}}, InvalidPayloadError, "$.payload"),
        ({"schema_version": 99}, UnknownSchemaVersionError, None),
        ({"event_type": "no.such"}, UnknownEventTypeError, None),
        ({"unknown_key": 1}, UsageError, None),
    ],
)
def test_an_invalid_event_after_valid_ones_raises_what_building_it_alone_raises(
    dispatcher: Dispatcher,
    registry: Registry,
    bad: dict[str, Any],
    error: type[Exception],
    path: str | None,
) -> None:
    good = {"correlation_id": "req-1", "causation_id": "evt_1"}
    events = [spec(registry, **good) for _ in range(3)]
    if "payload" in bad:
        bad = {"payload": {**registry.example_payload("credit.locked"), **bad["payload"]}}
    events.append(spec(registry, **{**good, **bad}))
    with pytest.raises(error) as alone:
        dispatcher._build_spec(events[-1], None)
    with pytest.raises(error) as caught:
        build_many(dispatcher, events)
    assert str(caught.value) == str(alone.value)
    if path is not None:
        assert getattr(caught.value, "path", "").startswith(path)


def test_a_too_large_payload_after_valid_ones_is_refused(registry: Registry) -> None:
    dispatcher = Dispatcher(
        None, producer="tests", tenant_id="tnt_a", registry=registry, max_payload_bytes=400
    )
    example = registry.example_payload("credit.locked")
    events = [spec(registry) for _ in range(3)]
    events.append(spec(registry, payload={**example, "locked_at": "2026-05-08T16:00:00Z"}))
    build_many(dispatcher, events)
    small = Dispatcher(
        None, producer="tests", tenant_id="tnt_a", registry=registry, max_payload_bytes=100
    )
    with pytest.raises(PayloadTooLargeError):
        build_many(small, events)


def test_an_invalid_traceparent_is_refused_on_every_event(
    dispatcher: Dispatcher, registry: Registry
) -> None:
    events = [spec(registry) for _ in range(3)]
    build_many(dispatcher, events, TRACE)
    with pytest.raises(InvalidEnvelopeError) as caught:
        build_many(dispatcher, events, "not-a-traceparent")
    assert caught.value.path == "$.traceparent"
