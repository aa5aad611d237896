"""The envelope codec without a database: publish parameters, row to Event, dead letters."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from dispatch_aio import Envelope
from dispatch_aio._codec import (
    PLAIN_FIELDS,
    PUBLISH_COLUMNS,
    dead_letter_envelope,
    event_from_row,
    publish_parameters,
)

WHEN = datetime(2026, 5, 9, 19, 0, 0, 123456, tzinfo=UTC)


def envelope() -> Envelope:
    return Envelope(
        event_id="evt_1",
        event_type="credit.locked",
        schema_version=1,
        occurred_at=WHEN,
        tenant_id="tnt_1",
        producer="revenue",
        subject="per_1",
        actor="system:revenue",
        payload={"a": 1},
        causation_id="evt_0",
    )


def stored(env: Envelope) -> dict[str, object]:
    """A row as the consumer's read returns it."""
    row: dict[str, object] = {name: getattr(env, name) for name in PLAIN_FIELDS}
    row["occurred_us"] = int((WHEN - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**6
    row["occurred_us"] = row["occurred_us"] + WHEN.microsecond  # type: ignore[operator]
    row["payload"] = json.dumps(env.payload)
    row["position"] = 7
    return row


def test_publish_parameters_follow_the_insert_column_order() -> None:
    env = envelope()
    params = publish_parameters(env, '{"a":1}', -42)
    assert params == (
        "evt_1",
        "credit.locked",
        1,
        "tnt_1",
        "revenue",
        "per_1",
        "system:revenue",
        WHEN,
        None,
        "evt_0",
        None,
        '{"a":1}',
        -42,
    )
    assert len(params) == len(PUBLISH_COLUMNS)


def test_a_row_becomes_the_event_that_was_published() -> None:
    env = envelope()
    event = event_from_row(stored(env), {"a": 1})
    assert event.model_dump(exclude={"position", "attempt"}) == env.model_dump()
    assert event.position == 7
    assert event.attempt == 1


def test_dead_letter_envelope_is_the_json_envelope_with_optional_fields_left_out() -> None:
    env = envelope()
    data = json.loads(dead_letter_envelope(stored(env)))
    assert data == env.to_json_dict()


def test_dead_letter_envelope_of_an_unrepresentable_occurred_at() -> None:
    row = stored(envelope())
    row["occurred_us"] = None
    data = json.loads(dead_letter_envelope(row))
    assert data["occurred_at"].startswith("unrepresentable")


# -- the consumer's payload parser ---------------------------------------------------


def test_the_payload_parser_gives_what_json_loads_gives() -> None:
    from dispatch_aio._consume._codec import parse_payload

    texts = [
        '{"a": 1, "b": [1.5, -0.0, 1e300], "c": {"d": null, "e": true}}',
        '{"big": 123456789012345678901234567890, "tiny": 5e-324}',
        '{"dup": 1, "dup": 2}',
        '{"text": "caf\\u00e9 \\ud83d\\ude00 \\n \\"q\\""}',
        "[]",
        '"just a string"',
    ]
    for text in texts:
        assert parse_payload(text) == json.loads(text), text


def test_the_payload_parser_falls_back_for_what_only_json_loads_reads() -> None:
    from dispatch_aio._consume._codec import parse_payload

    assert parse_payload('{"a": "\\ud800"}') == {"a": "\ud800"}  # a lone surrogate escape
    with pytest.raises(json.JSONDecodeError):  # json's message, with its position
        parse_payload('{"a": ')


# -- the consumer's decoder (rows to the Event a handler gets) -------------------------


def registry_row(payload: object) -> dict[str, object]:
    """A stored row of a registered type holding ``payload`` as its JSON text."""
    from dispatch_aio import Registry

    registry = Registry.load()
    version = registry.current_version("credit.locked")
    row = stored(envelope())
    row["schema_version"] = version
    row["payload"] = json.dumps(
        payload if payload is not None else registry.example_payload("credit.locked", version)
    )
    return row


def test_the_decoder_builds_the_event_as_the_attempt_it_is_told() -> None:
    from dispatch_aio import Registry
    from dispatch_aio._consume._codec import EventDecoder

    row = registry_row(None)
    event = EventDecoder(Registry.load(), {})(row, 3)
    assert event.attempt == 3
    assert event.position == 7
    assert event.payload == json.loads(str(row["payload"]))
    assert event.occurred_at == WHEN


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"payload": "[1]"}, "not a JSON object"),
        ({"payload": '{"a": '}, "Expecting value"),
        ({"payload": json.dumps({"unexpected": 1})}, "payload"),
        ({"occurred_us": None}, "infinite"),
    ],
)
def test_the_decoder_refuses_a_row_with_one_of_its_decode_errors(
    change: dict[str, object], error: str
) -> None:
    from dispatch_aio import Registry
    from dispatch_aio._consume._codec import DECODE_ERRORS, EventDecoder

    row = {**registry_row(None), **change}
    with pytest.raises(DECODE_ERRORS, match=error):
        EventDecoder(Registry.load(), {})(row)


def test_the_decoder_checks_a_payload_unless_publish_checked_it_against_our_schema() -> None:
    from dispatch_aio import Registry
    from dispatch_aio._consume._codec import DECODE_ERRORS, EventDecoder

    registry = Registry.load()
    decode = EventDecoder(registry, {})
    ours = registry.payload_digest("credit.locked", registry.current_version("credit.locked"))
    # A payload its schema refuses: whether it passes says whether it was checked.
    row = registry_row({"not": "a credit.locked payload"})
    for unchecked in (None, ours + 1, registry.payload_digest("credit.released", 1)):
        with pytest.raises(DECODE_ERRORS, match="payload"):
            decode({**row, "checked_against": unchecked})
    with pytest.raises(DECODE_ERRORS, match="payload"):
        decode(row)  # a row read without the column (a replay's)
    event = decode({**row, "checked_against": ours})
    assert event.payload == {"not": "a credit.locked payload"}
    # A type the registry does not know is refused whatever the row says.
    with pytest.raises(DECODE_ERRORS, match=r"credit\.nope"):
        decode({**row, "event_type": "credit.nope", "checked_against": None})


def test_the_decoder_parses_a_typed_handlers_model_and_refuses_what_it_refuses() -> None:
    import pydantic

    from dispatch_aio import Registry
    from dispatch_aio._consume._codec import DECODE_ERRORS, EventDecoder

    class Strict(pydantic.BaseModel):
        not_in_the_payload: str

    row = registry_row(None)
    with pytest.raises(DECODE_ERRORS):
        EventDecoder(Registry.load(), {"credit.locked": Strict})(row)

    class Loose(pydantic.BaseModel):
        person_id: str

    event = EventDecoder(Registry.load(), {"credit.locked": Loose})(row, 2)
    assert isinstance(event.payload, Loose)
    assert event.attempt == 2


def test_a_row_gives_every_field_of_the_event_in_the_field_lists_order() -> None:
    from dispatch_aio import Event

    event = event_from_row(stored(envelope()), {"a": 1}, 4)
    assert list(event.__dict__) == [*PLAIN_FIELDS, "occurred_at", "payload", "position", "attempt"]
    assert set(event.__dict__) == set(Event.model_fields)
    assert event.attempt == 4


def test_a_row_with_an_unrepresentable_occurred_at_is_undecodable() -> None:
    from dispatch_aio._codec import UndecodableEventError

    row = stored(envelope())
    for micros in (None, 10**20, -(10**20)):
        row["occurred_us"] = micros
        with pytest.raises(UndecodableEventError):
            event_from_row(row, {"a": 1})


# -- events forwarded as stored (the fan-out's handler) -----------------------------------


@pytest.mark.parametrize(
    "micros",
    [0, 1, 999_999, 1_000_000, -1, -1_000_001, 1_778_353_200_123_456, -62135596800000000],
)
def test_occurred_at_text_is_the_formatted_timestamp(micros: int) -> None:
    from dispatch_aio._codec import occurred_at
    from dispatch_aio._consume._codec import occurred_at_text
    from dispatch_aio._envelope import format_timestamp

    assert occurred_at_text(micros) == format_timestamp(occurred_at(micros))
    assert occurred_at_text(micros) == occurred_at_text(micros)  # the cached second too


def test_occurred_at_text_refuses_what_occurred_at_refuses() -> None:
    from dispatch_aio._codec import UndecodableEventError
    from dispatch_aio._consume._codec import occurred_at_text

    year_one = -62135596800000000
    for micros in (None, 10**20, -(10**20), year_one - 1, 253402300800000000):
        with pytest.raises(UndecodableEventError):
            occurred_at_text(micros)


def test_the_decoder_gives_a_stored_event_where_asked_without_checking_the_schema() -> None:
    from dispatch_aio import Registry
    from dispatch_aio._consume._codec import AS_STORED, EventDecoder, StoredEvent

    row = registry_row({"unexpected": 1})  # the schema refuses it; the receiver checks
    event = EventDecoder(Registry.load(), {"credit.locked": AS_STORED})(row, 2)
    assert isinstance(event, StoredEvent)
    assert (event.event_id, event.event_type, event.traceparent) == ("evt_1", "credit.locked", None)
    assert event.payload == {"unexpected": 1}
    assert event.occurred_at == "2026-05-09T19:00:00.123456Z"
    assert event.attempt == 2
    again = event.model_copy(update={"attempt": 3})
    assert (again.attempt, again.row, event.attempt) == (3, row, 2)
    with pytest.raises(TypeError):
        event.model_copy(update={"payload": {}})


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"payload": "[1]"}, "not a JSON object"),
        ({"payload": '{"a": '}, "Expecting value"),
        ({"occurred_us": None}, "infinite"),
        ({"occurred_us": 10**20}, "outside the years"),
    ],
)
def test_a_stored_event_is_still_refused_when_it_cannot_be_sent(
    change: dict[str, object], error: str
) -> None:
    from dispatch_aio import Registry
    from dispatch_aio._consume._codec import AS_STORED, DECODE_ERRORS, EventDecoder

    row = {**registry_row(None), **change}
    with pytest.raises(DECODE_ERRORS, match=error):
        EventDecoder(Registry.load(), {"credit.locked": AS_STORED})(row)
