"""The fast accepting path in front of fastjsonschema, on random mutations: same verdicts."""

from __future__ import annotations

import collections
import json
import random
from typing import Any

import fastjsonschema
import pytest

from dispatch_aio._contracts.fastcheck import with_fast_path as _with_fast_path
from dispatch_aio._contracts.schema_rules import FORMATS
from dispatch_aio._registry import ENVELOPE_SCHEMA_PATH, Registry
from dispatch_aio._resources import bundled_contracts_dir

DRAFT = "https://json-schema.org/draft/2020-12/schema"


class Str(str):
    pass


class Int(int):
    pass


def with_fast_path(schema: dict[str, Any], validator: Any) -> Any:
    return _with_fast_path(schema, validator, FORMATS)


def full_validator(schema: dict[str, Any]) -> Any:
    return fastjsonschema.compile(schema, formats=FORMATS, use_default=False)


def verdict(validate: Any, data: Any) -> tuple[str, Any]:
    try:
        returned = validate(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        return ("refused", (str(exc), exc.name, exc.rule))
    return ("accepted", returned is data)


def odd_values(value: Any) -> list[Any]:
    values: list[Any] = [None, True, False, 0, 1, -1, 2**70, 1.0, 2.5, "", "x", [], {}]
    values += ["a" * 300, Str("x"), Int(3), float("nan"), collections.OrderedDict(k=1)]
    if isinstance(value, str):
        values += [value + "\n", value + "x", value.upper(), value[:-1], Str(value)]
        values += [value.replace("-", "_", 1), " " + value, value.replace("Z", "+0200")]
        values += [value.replace("T", "t"), value.replace("2026", "0000")]
    if isinstance(value, int) and not isinstance(value, bool):
        values += [value - 1, value + 1, float(value), Int(value), -value, 0]
    return values


def variants(example: dict[str, Any], rng: random.Random) -> list[Any]:
    found: list[Any] = [example, dict(example), collections.OrderedDict(example)]
    found += [None, [], "text", 1, {**example, "unexpected": 1}, {}]
    for key in example:
        found.append({k: v for k, v in example.items() if k != key})
        for value in odd_values(example[key]):
            found.append({**example, key: value})
    for _ in range(50):  # a few changes at once
        changed = dict(example)
        for key in rng.sample(sorted(example), k=min(2, len(example))):
            changed[key] = rng.choice(odd_values(example[key]))
        found.append(changed)
    return found


def bundled_schemas() -> list[tuple[str, dict[str, Any]]]:
    root = bundled_contracts_dir()
    return [
        (str(path.relative_to(root)), json.loads(path.read_text()))
        for path in sorted(root.glob("**/schema/payloads/*.json"))
    ]


@pytest.mark.parametrize(("name", "schema"), bundled_schemas(), ids=lambda v: str(v)[-40:])
def test_every_bundled_payload_schema_gets_the_same_verdicts(
    name: str, schema: dict[str, Any]
) -> None:
    full = full_validator(schema)
    fast = with_fast_path(schema, full)
    rng = random.Random(name)
    for example in schema.get("examples", []):
        for data in variants(example, rng):
            assert verdict(fast, data) == verdict(full, data), (name, data)


def test_flat_schemas_get_a_fast_path_others_do_not() -> None:
    schemas = {path: schema for path, schema in bundled_schemas()}
    locked = next(s for p, s in schemas.items() if p.endswith("credit.locked-v1.json"))
    full = full_validator(locked)
    assert with_fast_path(locked, full) is not full
    fast_count = sum(
        with_fast_path(s, v) is not v for s, v in ((s, full_validator(s)) for s in schemas.values())
    )
    assert fast_count >= len(schemas) // 2  # most contracts are flat


def test_the_envelope_gets_a_fast_path_and_the_same_verdicts() -> None:
    root = bundled_contracts_dir()
    schema = json.loads((root / ENVELOPE_SCHEMA_PATH).read_text())
    full = full_validator(schema)
    fast = with_fast_path(schema, full)
    assert fast is not full  # its payload, an object left undescribed, is no obstacle
    rng = random.Random("envelope")
    assert schema["examples"]
    for example in schema["examples"]:
        for data in variants(example, rng):
            assert verdict(fast, data) == verdict(full, data), data


PROPERTIES: dict[str, Any] = {
    "code": {"type": "string", "enum": ["a", "b"], "minLength": 1, "maxLength": 1},
    "data": {"type": "object", "description": "anything"},
    "count": {"type": "integer", "minimum": -2, "maximum": 5},
    "flag": {"type": "boolean"},
    "at": {"type": "string", "format": "date-time"},
    "ref": {"type": "string", "pattern": "^r_[0-9]+$"},
}
EXAMPLE = {
    "data": {"k": [1]},
    "code": "a",
    "count": 0,
    "flag": True,
    "at": "2026-05-08T16:00:00Z",
    "ref": "r_1",
}


@pytest.mark.parametrize("extra", [False, True, None])
@pytest.mark.parametrize("required", [list(PROPERTIES), ["code", "ref"], []])
def test_optional_properties_and_additional_ones_get_the_same_verdicts(
    extra: bool | None, required: list[str]
) -> None:
    schema: dict[str, Any] = {
        "$schema": DRAFT,
        "type": "object",
        "properties": PROPERTIES,
        "required": required,
    }
    if extra is not None:
        schema["additionalProperties"] = extra
    full = full_validator(schema)
    fast = with_fast_path(schema, full)
    assert fast is not full
    rng = random.Random(3)
    for data in variants(EXAMPLE, rng):
        assert verdict(fast, data) == verdict(full, data), data


@pytest.mark.parametrize(
    "change",
    [
        {"properties": {"n": {"type": "number"}}},
        {"properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}},
        {"properties": {"n": {"type": "string", "format": "email"}}},
        {"properties": {"n": {"type": "string", "enum": ["a", 1]}}},
        {"properties": {"n": {"type": ["string", "null"]}}},
        {"properties": {"n": {"type": "object", "properties": {}}}},
        {"properties": {"n": {"type": "string", "default": "x"}}},
        {"properties": {"n": True}},
        {"additionalProperties": {"type": "string"}},
        {"minProperties": 1},
    ],
)
def test_schemas_outside_the_shape_keep_fastjsonschema_alone(change: dict[str, Any]) -> None:
    schema = {"$schema": DRAFT, "type": "object", "properties": {"n": {"type": "string"}}}
    schema.update(change)
    full = full_validator(schema)
    assert with_fast_path(schema, full) is full


def test_the_registry_validates_through_the_fast_path() -> None:
    registry = Registry.load()
    example = dict(registry.example_payload("credit.locked", 1))
    registry.validate_payload("credit.locked", 1, example)
    example["locked_credits"] = 0
    with pytest.raises(Exception, match=r"\$\.payload\.locked_credits"):
        registry.validate_payload("credit.locked", 1, example)
