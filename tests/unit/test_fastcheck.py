"""The quick acceptance check in front of payload validation agrees with the full one."""

from __future__ import annotations

import copy
from typing import Any

import fastjsonschema
import pytest

from dispatch_aio import InvalidPayloadError, Registry
from dispatch_aio._contracts.fastcheck import _compiled_patterns, _pattern_only, with_fast_path
from dispatch_aio._contracts.schema_rules import FORMATS

UUID = "019dd49c-ae04-726a-8f7f-021e87f3ba00"


class Text(str):
    """A str subclass: the check leaves it to the full validator."""


def _compile(schema: dict[str, Any]) -> Any:
    return fastjsonschema.compile(copy.deepcopy(schema), formats=FORMATS, use_default=False)


def _outcome(validate: Any, data: Any) -> str:
    try:
        validate(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        return f"{exc.name}: {exc.message}"
    return "ok"


FLAT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "count", "at", "state"],
    "properties": {
        "id": {"type": "string", "pattern": f"^per_{UUID[:8]}.*$"},
        "count": {"type": "integer", "minimum": 1, "maximum": 10},
        "at": {"type": "string", "format": "date-time"},
        "state": {"type": "string", "enum": ["on", "off"]},
        "note": {"type": "string", "minLength": 2, "maxLength": 4},
        "flag": {"type": "boolean"},
    },
}
GOOD = {"id": f"per_{UUID}", "count": 3, "at": "2026-05-08T16:00:00Z", "state": "on"}

VARIANTS: list[dict[str, Any]] = [
    GOOD,
    {**GOOD, "note": "abc", "flag": True},
    {**GOOD, "id": f"per_{UUID}\n"},  # "$" is end of string, not before a newline
    {**GOOD, "id": f"xper_{UUID}"},
    {**GOOD, "id": Text(f"per_{UUID}")},
    {**GOOD, "id": 7},
    {**GOOD, "count": 0},
    {**GOOD, "count": 11},
    {**GOOD, "count": 3.0},  # an integral float is an integer to the validator
    {**GOOD, "count": 3.5},
    {**GOOD, "count": True},
    {**GOOD, "at": "2026-02-30T16:00:00Z"},
    {**GOOD, "at": "2026-05-08 16:00:00"},
    {**GOOD, "state": "maybe"},
    {**GOOD, "state": Text("on")},
    {**GOOD, "note": "a"},
    {**GOOD, "note": "abcde"},
    {**GOOD, "flag": 1},
    {**GOOD, "extra": 1},
    {key: value for key, value in GOOD.items() if key != "count"},
    [],
    "text",
    None,
]


@pytest.mark.parametrize("data", VARIANTS, ids=range(len(VARIANTS)))
def test_the_check_and_the_validator_agree_on_every_value(data: Any) -> None:
    full = _compile(FLAT)
    fast = with_fast_path(FLAT, full, FORMATS)
    assert fast is not full
    assert _outcome(fast, data) == _outcome(full, data)


def test_extra_keys_where_allowed_are_left_to_the_validator() -> None:
    schema = {**FLAT, "additionalProperties": True}
    full = _compile(schema)
    fast = with_fast_path(schema, full, FORMATS)
    assert _outcome(fast, {**GOOD, "extra": [1]}) == "ok"


@pytest.mark.parametrize(
    "change",
    [
        {"minProperties": 1},
        {"properties": {"nested": {"type": "object", "required": ["a"]}}},
        {"properties": {"nested": {"type": "object", "properties": {"a": {"type": "string"}}}}},
        {"properties": {"list": {"type": "array"}}},
        {"properties": {"either": {"type": ["string", "null"]}}},
        {"properties": {"mail": {"type": "string", "format": "email"}}},
        {"properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}},
        {"properties": {"n": {"type": "number"}}},
        {"additionalProperties": {"type": "string"}},
    ],
)
def test_schemas_beyond_the_flat_shape_keep_the_validator_alone(change: dict[str, Any]) -> None:
    schema = {**FLAT, **change}
    schema["properties"] = {**FLAT["properties"], **change.get("properties", {})}
    full = _compile(schema)
    assert with_fast_path(schema, full, FORMATS) is full


def test_every_bundled_schema_agrees_on_its_examples_and_their_breakages() -> None:
    registry = Registry.load()
    covered = 0
    for event_type in registry.event_types():
        for version in registry.versions(event_type):
            schema = registry.payload_schema(event_type, version)
            full = _compile(schema)
            fast = with_fast_path(schema, full, FORMATS)
            covered += fast is not full
            for example in schema.get("examples", []):
                cases = [example]
                for key, value in example.items():
                    cases += [
                        {**example, key: None},
                        {**example, key: f"{value}\n" if isinstance(value, str) else "x"},
                        {k: v for k, v in example.items() if k != key},
                    ]
                for case in cases:
                    assert _outcome(fast, case) == _outcome(full, case), (event_type, case)
    assert covered > 0


def test_the_registry_still_raises_the_typed_error_with_its_path() -> None:
    registry = Registry.load()
    payload = registry.example_payload("credit.locked")
    payload["person_id"] = "per_not-a-uuid"
    with pytest.raises(InvalidPayloadError) as caught:
        registry.validate_payload("credit.locked", 1, payload)
    assert caught.value.path == "$.payload.person_id"


@pytest.mark.parametrize(
    ("definition", "inlined"),
    [
        ({"type": "string", "pattern": "^a+$"}, True),
        ({"type": "string", "pattern": "^a+$", "description": "as"}, True),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, False),
        ({"type": "string", "pattern": "^a+$", "format": "date-time"}, False),
        ({"type": ["string", "null"], "pattern": "^a+$"}, False),
        ({"type": "string"}, False),
    ],
)
def test_only_a_string_with_a_pattern_alone_is_searched_inline(
    definition: dict[str, Any], inlined: bool
) -> None:
    schema = {"type": "object", "properties": {"p": definition}}
    search = _pattern_only(definition, _compiled_patterns(_compile(schema)))
    assert (search is not None) == inlined


@pytest.mark.parametrize("value", ["aa", "ab", "", Text("aa"), 3, None, ["aa"], "aa\n"])
def test_an_inlined_pattern_gives_the_full_validators_verdict(value: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"p": {"type": "string", "pattern": "^a+$"}, "n": {"type": "integer"}},
    }
    full = _compile(schema)
    fast = with_fast_path(schema, full, FORMATS)
    data = {"p": value, "n": 1}
    assert _outcome(fast, data) == _outcome(full, data)
