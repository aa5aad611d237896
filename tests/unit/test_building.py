"""Building envelopes fast without letting anything through that validation refuses."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dispatch_aio import (
    Dispatcher,
    Envelope,
    InvalidEnvelopeError,
    InvalidPayloadError,
    Registry,
)
from dispatch_aio._codec import publish_parameters, trusted_envelope
from dispatch_aio._contracts.building import MAX_PAYLOAD_DEPTH
from dispatch_aio._ids import new_id
from dispatch_aio._resources import bundled_contracts_dir

ACTOR = "system:tests"


def build(dispatcher: Dispatcher, **kwargs: Any) -> tuple[Envelope, str]:
    payload = kwargs.pop("payload", None)
    if payload is None:
        payload = dispatcher.registry.example_payload("credit.locked")
    kwargs.setdefault("subject", new_id("per"))
    kwargs.setdefault("actor", ACTOR)
    return dispatcher.build("credit.locked", payload, **kwargs)


def values(**changes: Any) -> dict[str, Any]:
    given: dict[str, Any] = {
        "event_id": new_id("evt"),
        "event_type": "credit.locked",
        "schema_version": 1,
        "occurred_at": datetime(2026, 5, 9, 19, 0, tzinfo=UTC),
        "tenant_id": "tnt_a",
        "producer": "tests",
        "subject": new_id("per"),
        "actor": ACTOR,
        "payload": {"a": [1, {"b": None}]},
        "correlation_id": None,
        "causation_id": None,
        "traceparent": None,
    }
    given.update(changes)
    return given


@pytest.mark.parametrize(
    "optional",
    [{}, {"correlation_id": "req-1"}, {"causation_id": "evt_1", "traceparent": "00-ab"}],
)
def test_a_trusted_envelope_equals_a_validated_one(optional: dict[str, Any]) -> None:
    given = values(**optional)
    validated = Envelope.model_validate({k: v for k, v in given.items() if v is not None})
    trusted = trusted_envelope(dict(given))
    assert trusted is not None
    assert trusted == validated
    assert trusted.model_fields_set == validated.model_fields_set
    assert trusted.model_dump() == validated.model_dump()
    assert trusted.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True)
    assert repr(trusted) == repr(validated)
    assert publish_parameters(trusted, "{}", 7) == publish_parameters(validated, "{}", 7)
    with pytest.raises(ValueError, match="frozen"):
        trusted.subject = "per_2"  # type: ignore[misc]


class _Text(str):
    pass


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": _Text("per_1")},
        {"schema_version": True},
        {"correlation_id": _Text("req-1")},
        {"payload": type("Payload", (dict,), {})()},
    ],
)
def test_a_subclass_where_an_exact_type_is_trusted_is_left_to_pydantic(
    changes: dict[str, Any],
) -> None:
    assert trusted_envelope(values(**changes)) is None


def test_values_in_another_order_are_not_trusted() -> None:
    given = values()
    assert trusted_envelope(dict(reversed(list(given.items())))) is None


def test_a_str_subclass_subject_is_stored_as_a_str(dispatcher: Dispatcher) -> None:
    envelope, _ = build(dispatcher, subject=_Text(new_id("per")))
    assert type(envelope.subject) is str


class _EqualsAnything(str):
    """Compares equal to every string, so a remembered value must not be matched by ==."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("subject", "per_not-an-id"),
        ("subject", None),
        ("actor", "nobody"),
        ("actor", _EqualsAnything("nobody")),
        ("actor", 3),
        ("correlation_id", "has space"),
        ("correlation_id", _EqualsAnything("has space")),
        ("causation_id", ""),
    ],
)
def test_every_event_is_checked_after_valid_ones(
    dispatcher: Dispatcher, field: str, bad: Any
) -> None:
    good = {"correlation_id": "req-1", "causation_id": "evt_1"}
    for _ in range(3):  # the values these fields had are now remembered as valid
        build(dispatcher, **good)
    with pytest.raises(InvalidEnvelopeError) as caught:
        build(dispatcher, **{**good, field: bad})
    assert caught.value.path == f"$.{field}"


def _contracts_with(tmp_path: Path, edit: Any) -> Path:
    root = tmp_path / "contracts"
    shutil.copytree(bundled_contracts_dir(), root)
    envelope_file = root / "event-envelope" / "schema" / "envelope-v1.json"
    schema = json.loads(envelope_file.read_text())
    edit(schema)
    envelope_file.write_text(json.dumps(schema))
    return root


def test_a_rule_across_envelope_fields_is_checked_on_every_event(tmp_path: Path) -> None:
    def edit(schema: dict[str, Any]) -> None:
        # Only system actors may publish about reservations.
        schema["if"] = {"properties": {"subject": {"pattern": "^crr_"}}}
        schema["then"] = {"properties": {"actor": {"pattern": "^system:"}}}

    registry = Registry.load(_contracts_with(tmp_path, edit))
    dispatcher = Dispatcher(None, producer="tests", tenant_id="tnt_a", registry=registry)
    build(dispatcher, actor="user:per_1")
    build(dispatcher, subject=new_id("crr"))
    with pytest.raises(InvalidEnvelopeError):
        build(dispatcher, subject=new_id("crr"), actor="user:per_1")


def test_an_envelope_field_defined_by_reference_is_checked(tmp_path: Path) -> None:
    def edit(schema: dict[str, Any]) -> None:
        schema["definitions"] = {"system": {"type": "string", "pattern": "^system:"}}
        schema["properties"]["actor"] = {"$ref": "#/definitions/system"}

    registry = Registry.load(_contracts_with(tmp_path, edit))
    dispatcher = Dispatcher(None, producer="tests", tenant_id="tnt_a", registry=registry)
    build(dispatcher)
    build(dispatcher, actor="system:other")
    with pytest.raises(InvalidEnvelopeError) as caught:
        build(dispatcher, actor="user:per_1")
    assert caught.value.path == "$.actor"


def test_a_given_occurred_at_is_checked_on_every_event(tmp_path: Path) -> None:
    def edit(schema: dict[str, Any]) -> None:
        schema["properties"]["occurred_at"]["pattern"] = "^20"

    registry = Registry.load(_contracts_with(tmp_path, edit))
    dispatcher = Dispatcher(None, producer="tests", tenant_id="tnt_a", registry=registry)
    build(dispatcher, occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidEnvelopeError) as caught:
        build(dispatcher, occurred_at=datetime(1999, 1, 1, tzinfo=UTC))
    assert caught.value.path == "$.occurred_at"


def _chain(levels: int, leaf: Any, *, lists: bool) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value] if lists else {"n": value}
    return value


@pytest.mark.parametrize("lists", [False, True])
@pytest.mark.parametrize("leaf", [1, "s", None, {}, []])
def test_the_depth_limit_counts_every_level_down_to_a_leaf(
    free_form: Dispatcher, lists: bool, leaf: Any
) -> None:
    # The payload object is level 1; a leaf inside N more containers is level N + 2.
    fits = {"a": 1, "n": _chain(MAX_PAYLOAD_DEPTH - 2, leaf, lists=lists)}
    free_form.build("custom.free_form", fits, subject=new_id("per"), actor=ACTOR)
    deeper = {"a": 1, "n": _chain(MAX_PAYLOAD_DEPTH - 1, leaf, lists=lists)}
    with pytest.raises(InvalidPayloadError, match="nested deeper"):
        free_form.build("custom.free_form", deeper, subject=new_id("per"), actor=ACTOR)


@pytest.mark.parametrize("key", [1, None, 1.5, True, (1, 2)])
def test_a_payload_key_that_is_not_a_string_is_an_invalid_payload(
    free_form: Dispatcher, key: Any
) -> None:
    with pytest.raises(InvalidPayloadError, match="keys must be strings") as caught:
        free_form.build("custom.free_form", {key: "x"}, subject=new_id("per"), actor=ACTOR)
    assert caught.value.path == "$.payload"


@pytest.fixture
def free_form(tmp_path: Path) -> Dispatcher:
    """A dispatcher whose registry has a type with any object as its payload."""
    root = tmp_path / "contracts"
    shutil.copytree(bundled_contracts_dir(), root)
    schema = root / "custom" / "custom.free_form-v1.json"
    schema.parent.mkdir()
    schema.write_text(
        json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"})
    )
    registry_file = root / "event-types-registry.json"
    data = json.loads(registry_file.read_text())
    data["event_types"]["custom.free_form"] = {
        "contract": "custom",
        "producer": "tests",
        "subscribers": ["tests"],
        "current_version": 1,
        "versions": [
            {"version": 1, "status": "active", "payload_schema": "custom/custom.free_form-v1.json"}
        ],
    }
    registry_file.write_text(json.dumps(data))
    return Dispatcher(None, producer="tests", tenant_id="tnt_a", registry=Registry.load(root))


@pytest.mark.parametrize(
    "payload",
    [
        {"a": 1, "b": [1.5, -0.0, 1e300, None, True], "c": {"d": 'é\u2028"\\/\n'}},
        {"n": 2**80, "s": "x" * 300, "e": {}, "l": [[], {}]},
    ],
)
def test_the_encoded_payload_is_compact_json(free_form: Dispatcher, payload: Any) -> None:
    _, encoded = free_form.build("custom.free_form", payload, subject=new_id("per"), actor=ACTOR)
    assert encoded == json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class _HidesItsValues(dict[str, Any]):
    """A mapping whose values() hides what items() gives: here, itself."""

    def values(self) -> Any:
        return []


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), object(), {1j: 1}], ids=["nan", "inf", "object", "key"]
)
def test_what_json_cannot_hold_is_an_invalid_payload(free_form: Dispatcher, value: Any) -> None:
    with pytest.raises(InvalidPayloadError) as caught:
        free_form.build("custom.free_form", {"v": value}, subject=new_id("per"), actor=ACTOR)
    assert caught.value.path == "$.payload"


def test_a_cycle_hidden_from_the_depth_walk_is_an_invalid_payload(free_form: Dispatcher) -> None:
    cyclic = _HidesItsValues()
    cyclic["self"] = cyclic
    with pytest.raises(InvalidPayloadError):
        free_form.build("custom.free_form", {"v": cyclic}, subject=new_id("per"), actor=ACTOR)
