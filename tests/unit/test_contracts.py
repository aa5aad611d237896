"""The bundled contracts: their shape, their examples, and validator agreement.

fastjsonschema does the validation at run time; ``jsonschema`` (Draft 2020-12, with its
format checker) is the reference. The property tests below feed both validators valid
payloads generated from each schema and mutated ones (required field dropped, extra
field, wrong type, broken pattern, enum or date-time), and require the same verdict.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from rfc3339_validator import validate_rfc3339

from dispatch_aio import InvalidEnvelopeError, InvalidPayloadError, Registry
from dispatch_aio._contracts.schema_rules import is_rfc3339_datetime
from dispatch_aio._resources import bundled_contracts_dir

CONTRACTS = bundled_contracts_dir()
REGISTRY_JSON: dict[str, Any] = json.loads(
    (CONTRACTS / "event-types-registry.json").read_text(encoding="utf-8")
)
PAYLOAD_SCHEMAS: list[tuple[str, int, str]] = [
    (event_type, item["version"], item["payload_schema"])
    for event_type, entry in sorted(REGISTRY_JSON["event_types"].items())
    for item in entry["versions"]
]
ENVELOPE = "event-envelope/schema/envelope-v1.json"
ALL_SCHEMA_FILES = [path for _, _, path in PAYLOAD_SCHEMAS] + [ENVELOPE]

UUID7 = "[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
REFUND_REASONS = [
    "site_closure",
    "coach_unavailable_reschedule_failed",
    "force_majeure",
    "weather",
    "administrative_void",
    "customer_requested_in_window",
    "customer_requested_exception",
    "policy_exception",
    "bad_debt_writeoff",
]

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def load(relative: str) -> dict[str, Any]:
    """A fresh copy of a contract file (tests may modify what they get)."""
    return copy.deepcopy(_load(relative))


@functools.cache
def _load(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONTRACTS / relative).read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(CONTRACTS)


def reference(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@functools.cache
def reference_for(path: str) -> Draft202012Validator:
    return reference(_load(path))


@functools.cache
def samples_for(path: str) -> st.SearchStrategy[dict[str, Any]]:
    return valid_object(_load(path))


@functools.cache
def mutants_for(path: str) -> st.SearchStrategy[tuple[Any, bool]]:
    return mutated(_load(path))


# --------------------------------------------------------------------------- inventory


def test_registry_lists_23_types_and_24_payload_schemas(registry: Registry) -> None:
    assert len(registry.event_types()) == 23
    assert len(PAYLOAD_SCHEMAS) == 24
    on_disk = sorted(
        str(p.relative_to(CONTRACTS)) for p in CONTRACTS.glob("*/schema/payloads/*.json")
    )
    assert on_disk == sorted(path for _, _, path in PAYLOAD_SCHEMAS)


def test_expected_event_types_per_contract() -> None:
    by_contract: dict[str, set[str]] = {}
    for event_type, entry in REGISTRY_JSON["event_types"].items():
        by_contract.setdefault(entry["contract"], set()).add(event_type)
    assert by_contract == {
        "credit-reservation-lock": {
            "credit.purchased",
            "credit.funded",
            "credit.reserved",
            "credit.locked",
            "credit.consumed",
            "credit.forfeited",
            "credit.released",
            "customer.handoff",
        },
        "credit-reservation-funding-state": {
            "reservation.funded",
            "reservation.refunding",
            "reservation.refunded",
        },
        "identity": {"intake.captured", "intake.amended", "person.updated"},
        "lead-lifecycle": {
            "lead.created",
            "lead.reached",
            "lead.attempt.exhausted",
            "lead.callback.scheduled",
            "lead.stage.changed",
        },
        "payment-flow": {"payment.received", "payment.failed"},
        "refund-flow": {"refund.initiated", "refund.completed"},
    }


def test_versions_and_statuses(registry: Registry) -> None:
    released = registry.entry("credit.released")
    assert [(v.version, v.status) for v in released.versions] == [
        (1, "deprecated"),
        (2, "active"),
    ]
    assert released.current_version == 2
    assert registry.versions("intake.captured") == [2]
    others = [t for t in registry.event_types() if t not in {"credit.released", "intake.captured"}]
    for event_type in others:
        entry = registry.entry(event_type)
        assert [(v.version, v.status) for v in entry.versions] == [(1, "active")], event_type
        assert entry.current_version == 1


@pytest.mark.parametrize(("event_type", "version", "path"), PAYLOAD_SCHEMAS)
def test_schema_file_naming(event_type: str, version: int, path: str) -> None:
    contract = REGISTRY_JSON["event_types"][event_type]["contract"]
    assert path == f"{contract}/schema/payloads/{event_type}-v{version}.json"
    schema = load(path)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{path}")
    assert schema["title"] == f"{event_type} payload v{version}"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])
    assert schema["description"]


def test_registry_entries_are_plausible() -> None:
    slug = re.compile(r"^[a-z][a-z0-9]*([_-][a-z0-9]+)*$")
    for event_type, entry in REGISTRY_JSON["event_types"].items():
        assert slug.match(entry["producer"]), event_type
        assert entry["subscribers"], event_type
        assert all(slug.match(s) for s in entry["subscribers"]), event_type
    assert REGISTRY_JSON["event_types"]["credit.locked"]["subscribers"] == [
        "coaching",
        "delivery",
        "platform-warehouse",
    ]


# --------------------------------------------------------------------------- meta-schema


@pytest.mark.parametrize("path", ALL_SCHEMA_FILES)
def test_schema_is_valid_2020_12(path: str) -> None:
    Draft202012Validator.check_schema(load(path))


DRAFT7_INCOMPATIBLE = {
    "prefixItems",
    "$defs",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentSchemas",
    "dependentRequired",
    "$dynamicRef",
    "$dynamicAnchor",
    "$anchor",
    "minContains",
    "maxContains",
    "contentSchema",
}


@pytest.mark.parametrize("path", ALL_SCHEMA_FILES)
def test_schema_uses_only_draft7_keywords(path: str) -> None:
    text = (CONTRACTS / path).read_text(encoding="utf-8")
    for keyword in DRAFT7_INCOMPATIBLE:
        assert f'"{keyword}"' not in text, keyword


# --------------------------------------------------------------------------- examples


def uuid7_time(value: str) -> datetime:
    parsed = uuid.UUID(value.split("_", 1)[1])
    assert parsed.version == 7
    return datetime.fromtimestamp((parsed.int >> 80) / 1000, tz=UTC)


def ids_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [i for v in value.values() for i in ids_in(v)]
    if isinstance(value, list):
        return [i for v in value for i in ids_in(v)]
    if isinstance(value, str) and re.fullmatch(rf"[a-z]{{2,8}}_{UUID7}", value):
        return [value]
    return []


@pytest.mark.parametrize(("event_type", "version", "path"), PAYLOAD_SCHEMAS)
def test_examples_pass_both_validators(
    registry: Registry, event_type: str, version: int, path: str
) -> None:
    schema = load(path)
    examples = schema["examples"]
    assert examples, "every payload schema carries at least one example"
    ref = reference(schema)
    for example in examples:
        ref.validate(example)
        registry.validate_payload(event_type, version, example)
        assert set(example) >= set(schema["required"])
        for value in ids_in(example):
            assert 2025 <= uuid7_time(value).year <= 2027, value
    assert registry.example_payload(event_type, version) == examples[0]


def test_envelope_example_passes(registry: Registry) -> None:
    schema = load(ENVELOPE)
    (example,) = schema["examples"]
    reference(schema).validate(example)
    registry.validate_event(example)


# --------------------------------------------------------------------------- seed-fixed facts

UUID7_OF = {prefix: f"^{prefix}_{UUID7}$" for prefix in ("crr", "per", "les")}


def fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: v for k, v in spec.items() if k != "description"}
        for name, spec in schema["properties"].items()
    }


def test_credit_locked_fields() -> None:
    schema = load("credit-reservation-lock/schema/payloads/credit.locked-v1.json")
    assert fields(schema) == {
        "credit_reservation_id": {"type": "string", "pattern": UUID7_OF["crr"]},
        "lesson_id": {"type": "string", "pattern": UUID7_OF["les"]},
        "person_id": {"type": "string", "pattern": UUID7_OF["per"]},
        "locked_credits": {"type": "integer", "minimum": 1},
        "locked_at": {"type": "string", "format": "date-time"},
    }
    assert set(schema["required"]) == set(schema["properties"])


def test_credit_consumed_and_forfeited_fields() -> None:
    consumed = load("credit-reservation-lock/schema/payloads/credit.consumed-v1.json")
    assert fields(consumed) == {
        "credit_reservation_id": {"type": "string", "pattern": UUID7_OF["crr"]},
        "lesson_id": {"type": "string", "pattern": UUID7_OF["les"]},
        "consumed_credits": {"type": "integer", "minimum": 1},
        "consumed_at": {"type": "string", "format": "date-time"},
    }
    assert consumed["required"] == [
        "credit_reservation_id",
        "lesson_id",
        "consumed_credits",
        "consumed_at",
    ]
    forfeited = load("credit-reservation-lock/schema/payloads/credit.forfeited-v1.json")
    assert fields(forfeited)["forfeiture_reason"] == {
        "type": "string",
        "enum": ["late_cancel", "no_show"],
    }
    assert forfeited["required"] == [
        "credit_reservation_id",
        "lesson_id",
        "forfeited_credits",
        "forfeiture_reason",
        "forfeited_at",
    ]


def test_funding_state_fields() -> None:
    base = "credit-reservation-funding-state/schema/payloads/"
    funded = fields(load(base + "reservation.funded-v1.json"))
    assert funded["funding_source"]["enum"] == [
        "invoice_paid",
        "active_charge",
        "cash",
        "check",
        "credit_balance",
        "refund_recovery",
    ]
    assert funded["payment_processor_provider"]["enum"] == ["square", "stripe", "manual"]
    assert funded["payment_processor_ref"] == {"type": "string", "minLength": 1}
    refunding = load(base + "reservation.refunding-v1.json")
    refunded = load(base + "reservation.refunded-v1.json")
    assert refunding["required"] == [
        "credit_reservation_id",
        "person_id",
        "refund_reason",
        "payment_processor_provider",
        "payment_processor_ref",
        "refund_amount_cents",
        "currency",
        "refunding_at",
    ]
    assert refunded["required"] == [*refunding["required"], "refunded_at"]
    for schema in (refunding, refunded):
        props = fields(schema)
        assert props["refund_reason"]["enum"] == REFUND_REASONS
        assert props["refund_amount_cents"] == {"type": "integer", "minimum": 0}
        assert props["currency"] == {"type": "string", "pattern": "^[A-Z]{3}$"}


def test_credit_released_v2_adds_reason_code() -> None:
    v1 = load("credit-reservation-lock/schema/payloads/credit.released-v1.json")
    v2 = load("credit-reservation-lock/schema/payloads/credit.released-v2.json")
    assert set(v2["properties"]) == set(v1["properties"]) | {"reason_code"}
    assert v2["required"] == [*v1["required"], "reason_code"]
    for name in v1["properties"]:
        assert fields(v1)[name] == fields(v2)[name]
    assert v2["properties"]["reason_code"]["enum"] == REFUND_REASONS


def test_money_and_ids_follow_the_conventions() -> None:
    for _, _, path in PAYLOAD_SCHEMAS:
        for name, spec in load(path)["properties"].items():
            if name.endswith("_cents"):
                assert spec["type"] == "integer", (path, name)
                assert spec["minimum"] == 0, (path, name)
            if name == "currency":
                assert spec["pattern"] == "^[A-Z]{3}$", path
            if name.endswith("_at"):
                assert spec == {**spec, "type": "string", "format": "date-time"}, (path, name)
            if name.endswith("_id"):
                assert spec["pattern"].endswith(f"_{UUID7}$"), (path, name)


# --------------------------------------------------------------------------- strategies

SUPPORTED_KEYWORDS = {
    "$schema",
    "$id",
    "title",
    "description",
    "examples",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "minProperties",
    "pattern",
    "format",
    "enum",
    "minimum",
    "minLength",
    "maxLength",
    "items",
    "uniqueItems",
    "maxItems",
}
DATE_TIME_OFFSETS = ["Z", "z", "+00:00", "-00:00", "+05:30", "-08:00", "+14:00"]
BAD_DATE_TIMES = [
    "2026-05-01",
    "2026-05-01T10:00:00",
    "2026-05-01 10:00:00Z",
    "2026-05-01T10:00Z",
    "2026-5-1T10:00:00Z",
    "2026-13-01T10:00:00Z",
    "2026-00-10T10:00:00Z",
    "2026-02-29T10:00:00Z",
    "2026-04-31T10:00:00Z",
    "2026-05-00T10:00:00Z",
    "2026-05-01T24:00:00Z",
    "2026-05-01T10:60:00Z",
    "2026-05-01T10:00:60Z",
    "2026-05-01T10:00:00.Z",
    "2026-05-01T10:00:00+0200",
    "2026-05-01T10:00:00+24:00",
    "0000-01-01T00:00:00Z",
    "01 May 2026 10:00:00 GMT",
    "now",
    "",
]


def datetimes_rfc3339(*, utc_z_only: bool = False) -> st.SearchStrategy[str]:
    """Valid RFC 3339 timestamps; with ``utc_z_only`` the envelope's strict shape."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        moment = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
        text = f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S")
        digits = draw(st.integers(0, 9))
        if digits:
            text += "." + "".join(
                draw(st.lists(st.sampled_from("0123456789"), min_size=digits, max_size=digits))
            )
        offset = "Z" if utc_z_only else draw(st.sampled_from(DATE_TIME_OFFSETS))
        if not utc_z_only and draw(st.booleans()):
            text = text.replace("T", "t")
        return text + offset

    return build()


def valid_value(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy of values valid against ``schema`` (the keyword subset the contracts use)."""
    unknown = set(schema) - SUPPORTED_KEYWORDS
    assert not unknown, f"extend the generator for {unknown}"
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        if schema.get("format") == "date-time":
            return datetimes_rfc3339(utc_z_only="pattern" in schema)
        low, high = schema.get("minLength", 0), schema.get("maxLength", 40)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: low <= len(s) <= high
            )
        return st.text(min_size=low, max_size=min(high, 40))
    if kind == "integer":
        low = schema.get("minimum", -(10**12))
        return st.integers(min_value=low, max_value=low + 10**12)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(
            valid_value(schema["items"]),
            unique=bool(schema.get("uniqueItems")),
            max_size=schema.get("maxItems", 5),
        )
    if kind == "object":
        return valid_object(schema)
    raise AssertionError(f"no generator for {schema}")


def valid_object(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = list(schema.get("required", []))
    optional = [name for name in properties if name not in required]
    fewest = max(0, schema.get("minProperties", 0) - len(required))
    values = {name: valid_value(spec) for name, spec in properties.items()}

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        chosen = required + (
            draw(st.lists(st.sampled_from(optional), unique=True, min_size=fewest))
            if optional
            else []
        )
        if not properties:  # a free-form object, like the envelope's payload
            return draw(st.dictionaries(st.text(max_size=8), json_values(), max_size=3))
        return {name: draw(values[name]) for name in chosen}

    return build()


def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=5,
    )


WRONG_TYPED: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.integers(),
    "number": st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    "string": st.text(max_size=10),
    "array": st.lists(st.integers(), max_size=2),
    "object": st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
}


def objects_in(
    value: dict[str, Any], schema: dict[str, Any]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every object node of a sample together with its schema, root first."""
    found = [(value, schema)]
    for name, spec in schema.get("properties", {}).items():
        if spec.get("type") == "object" and isinstance(value.get(name), dict):
            found += objects_in(value[name], spec)
    return found


Mutation = Callable[[st.DrawFn, dict[str, Any], dict[str, Any]], bool | None]


def drop_required(draw: st.DrawFn, node: dict[str, Any], schema: dict[str, Any]) -> bool | None:
    present = [name for name in schema.get("required", []) if name in node]
    if not present:
        return None
    del node[draw(st.sampled_from(present))]
    return True


def add_extra(draw: st.DrawFn, node: dict[str, Any], schema: dict[str, Any]) -> bool | None:
    key = draw(
        st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(
            lambda k: k not in schema.get("properties", {})
        )
    )
    if "properties" not in schema:
        return None  # a free-form object accepts anything
    node[key] = draw(json_values())
    return True


def change_type(draw: st.DrawFn, node: dict[str, Any], schema: dict[str, Any]) -> bool | None:
    present = [name for name in node if name in schema.get("properties", {})]
    if not present:
        return None
    name = draw(st.sampled_from(present))
    allowed = schema["properties"][name].get("type")
    if allowed == "integer" and draw(st.booleans()):
        node[name] = float(node[name])  # 3.0 is an integer since draft 6: both accept
        return False
    kinds = [
        k for k in WRONG_TYPED if k != allowed and not (allowed == "number" and k == "integer")
    ]
    node[name] = draw(WRONG_TYPED[draw(st.sampled_from(kinds))])
    return True


def near_misses(value: str) -> st.SearchStrategy[str]:
    """Small edits of a valid string: most of them break a pattern."""
    return st.sampled_from(
        [
            value[:-1],
            value + "0",
            " " + value,
            value.upper(),
            "x" + value[1:],
            value.replace("-7", "-4", 1),
            value.replace("_", "-", 1),
            value.replace("-", "", 1),
        ]
    ) | st.builds(
        lambda i, c: value[:i] + c + value[i + 1 :],
        st.integers(0, max(len(value) - 1, 0)),
        st.characters(),
    )


def break_string(draw: st.DrawFn, node: dict[str, Any], schema: dict[str, Any]) -> bool | None:
    props = schema.get("properties", {})
    candidates = [
        name
        for name in node
        if isinstance(node[name], str)
        and ({"pattern", "enum", "minLength", "format"} & set(props.get(name, {})))
    ]
    if not candidates:
        return None
    name = draw(st.sampled_from(candidates))
    spec, value = props[name], node[name]
    if "enum" in spec:
        node[name] = draw(
            (near_misses(value) | st.text(max_size=20)).filter(lambda s: s not in spec["enum"])
        )
    elif spec.get("format") == "date-time":
        node[name] = draw(st.sampled_from(BAD_DATE_TIMES))
    elif "pattern" in spec:
        # re.search with Python's "$" is the reference's semantics; a string it rejects
        # is rejected by fastjsonschema's stricter "\Z" anchoring as well.
        node[name] = draw(
            (near_misses(value) | st.text(max_size=60)).filter(
                lambda s: re.search(spec["pattern"], s) is None
            )
        )
    else:
        node[name] = ""
    return True


def break_bound(draw: st.DrawFn, node: dict[str, Any], schema: dict[str, Any]) -> bool | None:
    props = schema.get("properties", {})
    candidates = [
        name
        for name in node
        if (isinstance(node[name], list) and node[name] and props.get(name, {}).get("uniqueItems"))
        or "minimum" in props.get(name, {})
    ]
    if not candidates:
        return None
    name = draw(st.sampled_from(candidates))
    if isinstance(node[name], list):
        node[name] = [*node[name], node[name][0]]  # breaks uniqueItems
    else:
        node[name] = props[name]["minimum"] - draw(st.integers(1, 10**6))
    return True


MUTATIONS: list[Mutation] = [
    drop_required,
    add_extra,
    change_type,
    break_string,
    break_bound,
]


def mutated(schema: dict[str, Any]) -> st.SearchStrategy[tuple[Any, bool]]:
    """Samples derived from valid ones; the flag says the sample must be rejected."""
    return _mutated(valid_object(schema), schema)


@st.composite
def _mutated(
    draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]], schema: dict[str, Any]
) -> tuple[Any, bool]:
    sample = copy.deepcopy(draw(valid))
    if draw(st.integers(0, 30)) == 0:
        return draw(
            WRONG_TYPED[draw(st.sampled_from(["null", "array", "string", "integer"]))]
        ), True
    nodes = objects_in(sample, schema)
    node, node_schema = draw(st.sampled_from(nodes))
    for mutation in draw(st.permutations(MUTATIONS)):
        outcome = mutation(draw, node, node_schema)
        if outcome is not None:
            return sample, outcome
    return sample, False


# --------------------------------------------------------------------------- agreement


def fast_verdict(registry: Registry, target: tuple[str, int] | None, sample: Any) -> bool:
    try:
        if target is None:
            registry.validate_envelope(sample)
        else:
            registry.validate_payload(target[0], target[1], sample)
    except (InvalidEnvelopeError, InvalidPayloadError):
        return False
    return True


TARGETS: list[tuple[tuple[str, int] | None, str]] = [
    ((event_type, version), path) for event_type, version, path in PAYLOAD_SCHEMAS
] + [(None, ENVELOPE)]


@pytest.mark.parametrize(
    ("target", "path"), TARGETS, ids=[p.rsplit("/", 1)[-1] for _, p in TARGETS]
)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_validators_agree_on_valid_samples(
    registry: Registry, target: tuple[str, int] | None, path: str, data: st.DataObject
) -> None:
    sample = data.draw(samples_for(path), label="sample")
    ref = reference_for(path)
    assert ref.is_valid(sample), list(ref.iter_errors(sample))
    assert fast_verdict(registry, target, sample)


@pytest.mark.parametrize(
    ("target", "path"), TARGETS, ids=[p.rsplit("/", 1)[-1] for _, p in TARGETS]
)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_validators_agree_on_mutated_samples(
    registry: Registry, target: tuple[str, int] | None, path: str, data: st.DataObject
) -> None:
    sample, must_fail = data.draw(mutants_for(path), label="sample")
    expected = reference_for(path).is_valid(sample)
    assert fast_verdict(registry, target, sample) == expected
    if must_fail:
        assert not expected


@pytest.mark.parametrize("bad", BAD_DATE_TIMES)
def test_bad_timestamps_fail_both_validators(registry: Registry, bad: str) -> None:
    path = "credit-reservation-lock/schema/payloads/credit.locked-v1.json"
    payload = {**load(path)["examples"][0], "locked_at": bad}
    assert not reference(load(path)).is_valid(payload)
    with pytest.raises(InvalidPayloadError) as info:
        registry.validate_payload("credit.locked", 1, payload)
    assert info.value.path == "$.payload.locked_at"


def test_payload_timestamps_accept_offsets_envelope_does_not(registry: Registry) -> None:
    payload = registry.example_payload("credit.locked")
    payload["locked_at"] = "2026-05-01T10:00:00+02:00"
    registry.validate_payload("credit.locked", 1, payload)
    envelope = copy.deepcopy(load(ENVELOPE)["examples"][0])
    envelope["occurred_at"] = "2026-05-01T10:00:00+02:00"
    assert not reference(load(ENVELOPE)).is_valid(envelope)
    assert not fast_verdict(registry, None, envelope)


def test_trailing_newline_is_refused(registry: Registry) -> None:
    """The one known divergence, in the safe direction.

    Python's ``re`` lets ``$`` match before a final newline, so the reference validator
    accepts ``"per_...\\n"``; ECMA-262 regexes (and fastjsonschema, which anchors with
    ``\\Z``) do not. The runtime refuses such ids.
    """
    payload = registry.example_payload("credit.locked")
    payload["person_id"] += "\n"
    with pytest.raises(InvalidPayloadError):
        registry.validate_payload("credit.locked", 1, payload)


# --------------------------------------------------------------------------- date-time checker


@settings(max_examples=400, deadline=None, database=None)
@given(
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,3})?"
        r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?",
        fullmatch=True,
    )
    | datetimes_rfc3339()
)
def test_date_time_checker_matches_reference(text: str) -> None:
    assert is_rfc3339_datetime(text) == validate_rfc3339(text.upper())


def test_date_time_checker_edges() -> None:
    assert is_rfc3339_datetime("2024-02-29T23:59:59.999999999Z")
    assert is_rfc3339_datetime("2026-05-01t10:00:00z")
    assert not is_rfc3339_datetime("2026-02-29T10:00:00Z")
    assert not is_rfc3339_datetime("1900-02-29T10:00:00Z")
    assert not is_rfc3339_datetime("2026-05-01T10:00:00Z\n")
    now = datetime.now(UTC)
    assert is_rfc3339_datetime(now.isoformat().replace("+00:00", "Z"))
    assert is_rfc3339_datetime((now + timedelta(hours=5)).astimezone().isoformat())


@pytest.mark.parametrize("year", ["0000", "0001", "1900", "2000", "2023", "2024", "9999"])
def test_date_time_checker_knows_every_day_of_every_month(year: str) -> None:
    # Most values are decided by one regular expression (a day the month always has),
    # the rest by the calendar: both agree with the reference on every day.
    for month in range(14):
        for day in range(33):
            for tail in ("T16:00:00Z", "t23:59:59.5+05:30"):
                text = f"{year}-{month:02d}-{day:02d}{tail}"
                assert is_rfc3339_datetime(text) == validate_rfc3339(text.upper()), text


def test_example_paths_are_inside_contracts() -> None:
    for _, _, path in PAYLOAD_SCHEMAS:
        assert (CONTRACTS / path).resolve().is_relative_to(Path(CONTRACTS).resolve())
