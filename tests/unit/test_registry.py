"""Registry loading, lookups, typed validation errors and load-time checks."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path
from types import MappingProxyType
from typing import Any

import fastjsonschema
import pytest

from dispatch_aio import (
    ContractError,
    EventValidationError,
    InvalidEnvelopeError,
    InvalidPayloadError,
    Registry,
    RegistryError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
)
from dispatch_aio._registry import CONTRACTS_ENV_VAR, EventTypeEntry, VersionEntry
from dispatch_aio._resources import bundled_contracts_dir

LOCKED = "credit-reservation-lock/schema/payloads/credit.locked-v1.json"
PER = "per_019dd49c-ae04-726a-8f7f-021e87f3ba00"


@pytest.fixture
def contracts(tmp_path: Path) -> Path:
    """A writable copy of the bundled contracts."""
    target = tmp_path / "contracts"
    shutil.copytree(bundled_contracts_dir(), target)
    return target


@pytest.fixture
def envelope(registry: Registry) -> dict[str, Any]:
    path = registry.root / "event-envelope" / "schema" / "envelope-v1.json"
    example: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["examples"][0]
    return example


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def edit_registry(root: Path, change: Any) -> None:
    data = read_json(root / "event-types-registry.json")
    change(data["event_types"])
    write_json(root / "event-types-registry.json", data)


def edit_schema(root: Path, relative: str, change: Any) -> None:
    schema = read_json(root / relative)
    change(schema)
    write_json(root / relative, schema)


def problems_of(root: Path) -> list[str]:
    with pytest.raises(RegistryError) as info:
        Registry.load(root)
    return info.value.problems


# --------------------------------------------------------------------------- sources


def test_default_is_the_bundled_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONTRACTS_ENV_VAR, raising=False)
    loaded = Registry.load()
    assert loaded.root == bundled_contracts_dir()
    assert len(loaded.event_types()) == 23


def test_explicit_directory(contracts: Path) -> None:
    edit_registry(contracts, lambda types: types.pop("lead.reached"))
    loaded = Registry.load(contracts)
    assert loaded.root == contracts
    assert "lead.reached" not in loaded
    assert len(loaded.event_types()) == 22
    assert Registry.load(str(contracts)).event_types() == loaded.event_types()


def test_environment_variable_is_read_at_call_time(
    contracts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit_registry(contracts, lambda types: types.pop("lead.reached"))
    monkeypatch.setenv(CONTRACTS_ENV_VAR, str(contracts))
    assert Registry.load().root == contracts
    assert "lead.reached" not in Registry.load()
    monkeypatch.setenv(CONTRACTS_ENV_VAR, "")
    assert "lead.reached" in Registry.load()


def test_a_directory_loaded_again_unchanged_gives_the_same_registry(contracts: Path) -> None:
    first = Registry.load(contracts)
    assert Registry.load(contracts) is first
    assert Registry.load(str(contracts)) is first


def test_any_change_to_a_file_is_read_on_the_next_load(contracts: Path) -> None:
    first = Registry.load(contracts)
    relative = first.entry("credit.locked").versions[-1].payload_schema
    path = contracts / relative
    before = path.read_bytes()
    # Same size, same modification time: only the content tells the change.
    changed = before.replace(b'"type"', b'"Type"', 1)
    assert len(changed) == len(before)
    assert changed != before
    stat = path.stat()
    path.write_bytes(changed)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert problems_of(contracts)  # an unknown keyword now: the file was read again
    path.write_bytes(before)
    again = Registry.load(contracts)
    assert again is first  # the same files as the first load
    (contracts / "notes.txt").write_text("a file loading does not read still counts")
    assert Registry.load(contracts) is not first


def test_a_change_behind_a_symbolic_link_is_read_on_the_next_load(
    contracts: Path, tmp_path: Path
) -> None:
    """A contracts directory may link in schemas kept elsewhere (loading follows the
    link); a change there is a change of the directory. A link back up the tree is
    walked once."""
    relative = Registry.load(contracts).entry("credit.locked").versions[-1].payload_schema
    linked = (contracts / relative).parent
    outside = tmp_path / "kept-elsewhere"
    shutil.move(linked, outside)
    linked.symlink_to(outside, target_is_directory=True)
    (contracts / "loop").symlink_to(contracts, target_is_directory=True)
    first = Registry.load(contracts)
    assert Registry.load(contracts) is first
    path = outside / Path(relative).name
    path.write_bytes(path.read_bytes().replace(b'"type"', b'"Type"', 1))
    assert problems_of(contracts)  # an unknown keyword now: the linked file was read again


def test_a_directory_broken_and_mended_gives_back_the_registry_of_its_files(
    contracts: Path,
) -> None:
    """A broken directory is refused, not answered from an earlier load; once mended,
    its files are those of that load again, and so is its registry."""
    first = Registry.load(contracts)
    registry_file = contracts / "event-types-registry.json"
    good = registry_file.read_bytes()
    registry_file.write_text("{")
    assert problems_of(contracts)
    registry_file.write_bytes(good)
    assert Registry.load(contracts) is first


def test_explicit_directory_wins_over_environment(
    contracts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONTRACTS_ENV_VAR, str(tmp_path / "nowhere"))
    assert Registry.load(contracts).root == contracts
    with pytest.raises(RegistryError, match="does not exist"):
        Registry.load()


# --------------------------------------------------------------------------- lookups


def test_lookups(registry: Registry) -> None:
    types = registry.event_types()
    assert types == sorted(types)
    assert "credit.locked" in registry
    assert "credit.unknown" not in registry
    assert registry.versions("credit.released") == [1, 2]
    assert registry.current_version("credit.released") == 2
    assert registry.current_version("intake.captured") == 2
    assert registry.versions("intake.captured") == [2]


def test_entry_is_frozen_and_complete(registry: Registry) -> None:
    entry = registry.entry("credit.locked")
    assert entry == EventTypeEntry(
        event_type="credit.locked",
        contract="credit-reservation-lock",
        producer="revenue",
        subscribers=("coaching", "delivery", "platform-warehouse"),
        current_version=1,
        versions=(VersionEntry(1, "active", LOCKED),),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.current_version = 2  # type: ignore[misc]
    released = registry.entry("credit.released")
    assert released.version(1).deprecated
    assert not released.version(2).deprecated
    with pytest.raises(UnknownSchemaVersionError):
        released.version(3)


def test_example_payload_is_a_deep_copy(registry: Registry) -> None:
    first = registry.example_payload("intake.amended")
    first["changes"]["email"] = "changed@example.com"
    first.clear()
    again = registry.example_payload("intake.amended")
    assert again["changes"]["email"] != "changed@example.com"
    assert registry.example_payload("credit.released")["reason_code"] == "weather"
    assert "reason_code" not in registry.example_payload("credit.released", 1)


def test_payload_schema_is_a_deep_copy(registry: Registry) -> None:
    schema = registry.payload_schema("credit.locked")
    schema["properties"].clear()
    assert registry.payload_schema("credit.locked", 1)["properties"]


def test_example_payload_without_examples(contracts: Path) -> None:
    edit_schema(contracts, LOCKED, lambda s: s.pop("examples"))
    with pytest.raises(ContractError, match="no examples"):
        Registry.load(contracts).example_payload("credit.locked")


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.entry("credit.nope"),
        lambda r: r.versions("credit.nope"),
        lambda r: r.current_version("credit.nope"),
        lambda r: r.example_payload("credit.nope"),
        lambda r: r.payload_schema("credit.nope", 1),
        lambda r: r.validate_payload("credit.nope", 1, {}),
        lambda r: r.payload_digest("credit.nope", 1),
    ],
)
def test_unknown_event_type(registry: Registry, call: Any) -> None:
    with pytest.raises(UnknownEventTypeError) as info:
        call(registry)
    assert info.value.event_type == "credit.nope"


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.example_payload("credit.released", 3),
        lambda r: r.payload_schema("credit.released", 0),
        lambda r: r.validate_payload("credit.released", 3, {}),
        lambda r: r.payload_digest("credit.released", 3),
    ],
)
def test_unknown_schema_version(registry: Registry, call: Any) -> None:
    with pytest.raises(UnknownSchemaVersionError) as info:
        call(registry)
    assert info.value.event_type == "credit.released"
    assert info.value.known_versions == [1, 2]


# --------------------------------------------------------------------------- payload errors


def payload_error(registry: Registry, event_type: str, version: int, payload: Any) -> Any:
    with pytest.raises(InvalidPayloadError) as info:
        registry.validate_payload(event_type, version, payload)
    error = info.value
    assert isinstance(error, EventValidationError)
    assert error.event_type == event_type
    assert error.schema_version == version
    assert error.path in str(error)
    return error


def test_valid_payload_passes_unchanged(registry: Registry) -> None:
    payload = registry.example_payload("credit.locked")
    before = copy.deepcopy(payload)
    registry.validate_payload("credit.locked", 1, payload)
    assert payload == before


def test_pattern_failure_names_the_field(registry: Registry) -> None:
    payload = registry.example_payload("credit.locked")
    payload["person_id"] = "per_not-a-uuid"
    error = payload_error(registry, "credit.locked", 1, payload)
    assert error.path == "$.payload.person_id"
    assert "pattern" in error.reason


def test_missing_required_field_is_pointed_at(registry: Registry) -> None:
    payload = registry.example_payload("credit.locked")
    del payload["locked_at"]
    error = payload_error(registry, "credit.locked", 1, payload)
    assert error.path == "$.payload.locked_at"
    assert error.reason == "required property is missing"


def test_extra_field_is_pointed_at(registry: Registry) -> None:
    payload = registry.example_payload("credit.locked")
    payload["coach_id"] = "x"
    error = payload_error(registry, "credit.locked", 1, payload)
    assert error.path == "$.payload.coach_id"
    payload = registry.example_payload("credit.locked")
    payload["odd key"] = 1
    assert payload_error(registry, "credit.locked", 1, payload).path == '$.payload["odd key"]'


def test_type_enum_and_minimum_failures(registry: Registry) -> None:
    payload = registry.example_payload("credit.locked")
    payload["locked_credits"] = "1"
    assert payload_error(registry, "credit.locked", 1, payload).path == "$.payload.locked_credits"
    payload["locked_credits"] = 0
    assert payload_error(registry, "credit.locked", 1, payload).path == "$.payload.locked_credits"
    payload = registry.example_payload("credit.released", 2)
    payload["reason_code"] = "rain"
    error = payload_error(registry, "credit.released", 2, payload)
    assert error.path == "$.payload.reason_code"
    assert "weather" in error.reason


def test_released_v2_requires_reason_code_v1_refuses_it(registry: Registry) -> None:
    v2 = registry.example_payload("credit.released", 2)
    v1 = {k: v for k, v in v2.items() if k != "reason_code"}
    registry.validate_payload("credit.released", 1, v1)
    assert payload_error(registry, "credit.released", 2, v1).path == "$.payload.reason_code"
    assert payload_error(registry, "credit.released", 1, v2).path == "$.payload.reason_code"


def test_nested_paths(registry: Registry) -> None:
    payload = registry.example_payload("intake.amended")
    payload["changes"]["email"] = "no-at-sign"
    assert payload_error(registry, "intake.amended", 1, payload).path == "$.payload.changes.email"
    payload = registry.example_payload("intake.amended")
    payload["changes"] = {}
    assert payload_error(registry, "intake.amended", 1, payload).path == "$.payload.changes"
    payload = registry.example_payload("intake.captured")
    payload["lesson_interests"] = ["swim_team", "scuba"]
    error = payload_error(registry, "intake.captured", 2, payload)
    assert error.path == "$.payload.lesson_interests[1]"


@pytest.mark.parametrize("payload", [None, [], "credit", 3, True])
def test_payload_must_be_an_object(registry: Registry, payload: Any) -> None:
    error = payload_error(registry, "credit.locked", 1, payload)
    assert error.path == "$.payload"
    assert "object" in error.reason


def test_validators_are_compiled_once_at_load(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("validation must not compile schemas")

    monkeypatch.setattr(fastjsonschema, "compile", refuse)
    for event_type in registry.event_types():
        for version in registry.versions(event_type):
            registry.validate_payload(
                event_type, version, registry.example_payload(event_type, version)
            )


# --------------------------------------------------------------------------- envelope


def envelope_error(registry: Registry, envelope: Any) -> Any:
    with pytest.raises(InvalidEnvelopeError) as info:
        registry.validate_envelope(envelope)
    return info.value


def test_valid_envelope(registry: Registry, envelope: dict[str, Any]) -> None:
    registry.validate_envelope(envelope)
    registry.validate_envelope(MappingProxyType(envelope))
    registry.validate_event(envelope)
    minimal = {
        k: v
        for k, v in envelope.items()
        if k not in {"correlation_id", "causation_id", "traceparent"}
    }
    registry.validate_envelope(minimal)


def test_non_utc_occurred_at_is_refused(registry: Registry, envelope: dict[str, Any]) -> None:
    envelope["occurred_at"] = "2026-05-01T10:00:00+02:00"
    error = envelope_error(registry, envelope)
    assert error.path == "$.occurred_at"
    assert error.event_type == "credit.locked"
    assert error.schema_version == 1


@pytest.mark.parametrize(
    "value",
    [
        "2026-05-01T10:00:00+00:00",
        "2026-05-01T10:00:00",
        "2026-05-01 10:00:00Z",
        "2026-05-01T10:00:00z",
        "2026-05-01t10:00:00Z",
        "2026-05-01T10:00Z",
        "2026-02-30T10:00:00Z",
        "2026-13-01T10:00:00Z",
        "2026-05-01T24:00:00Z",
        "2026-05-01T10:00:60Z",
        "2026-05-01T10:00:00.Z",
        "2026-05-01T10:00:00.1234567890Z",
        "2026-05-01",
        "",
        1777629600,
    ],
)
def test_malformed_occurred_at(registry: Registry, envelope: dict[str, Any], value: Any) -> None:
    envelope["occurred_at"] = value
    assert envelope_error(registry, envelope).path == "$.occurred_at"


def test_fractional_seconds_are_optional(registry: Registry, envelope: dict[str, Any]) -> None:
    for value in ("2026-05-01T10:00:00Z", "2026-05-01T10:00:00.5Z", "2024-02-29T00:00:00.123456Z"):
        envelope["occurred_at"] = value
        registry.validate_envelope(envelope)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "ev_019ded47-d17d-79c6-9c32-96d046de240a"),
        ("event_id", "evt-019ded47-d17d-79c6-9c32-96d046de240a"),
        ("event_id", "msg_019ded47-d17d-79c6-9c32-96d046de240a"),
        ("event_id", "evt_019ded47-d17d-49c6-9c32-96d046de240a"),
        ("event_id", "evt_019DED47-D17D-79C6-9C32-96D046DE240A"),
        ("event_type", "credit"),
        ("event_type", "Credit.Locked"),
        ("schema_version", 0),
        ("schema_version", "1"),
        ("schema_version", True),
        ("tenant_id", "sguild"),
        ("tenant_id", "tnt_"),
        ("producer", "Revenue"),
        ("subject", "p_019dd49c-ae04-726a-8f7f-021e87f3ba00"),
        ("subject", "per_123"),
        ("actor", "revenue"),
        ("actor", "system: revenue"),
        ("payload", []),
        ("correlation_id", ""),
        ("causation_id", "x" * 201),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
        ("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
    ],
)
def test_bad_envelope_fields(
    registry: Registry, envelope: dict[str, Any], field: str, value: Any
) -> None:
    envelope[field] = value
    assert envelope_error(registry, envelope).path == f"$.{field}"


def test_extra_and_missing_envelope_fields(registry: Registry, envelope: dict[str, Any]) -> None:
    extra = {**envelope, "extra": 1}
    assert envelope_error(registry, extra).path == "$.extra"
    missing = {k: v for k, v in envelope.items() if k != "subject"}
    assert envelope_error(registry, missing).path == "$.subject"


def test_envelope_error_without_usable_identity(registry: Registry) -> None:
    error = envelope_error(registry, {"event_type": 7})
    assert error.event_type == "?"
    assert error.schema_version is None
    error = envelope_error(registry, ["not", "an", "object"])
    assert error.path == "$"


def test_validate_event_checks_the_payload(registry: Registry, envelope: dict[str, Any]) -> None:
    envelope["payload"]["person_id"] = "nobody"
    with pytest.raises(InvalidPayloadError) as info:
        registry.validate_event(envelope)
    assert info.value.path == "$.payload.person_id"
    envelope["event_type"] = "credit.vanished"
    with pytest.raises(UnknownEventTypeError):
        registry.validate_event(envelope)


# --------------------------------------------------------------------------- load-time checks


def test_one_error_lists_every_problem(contracts: Path) -> None:
    (contracts / "credit-reservation-lock/schema/payloads/credit.funded-v1.json").unlink()

    def registry_changes(types: dict[str, Any]) -> None:
        types["credit.locked"]["versions"].append(dict(types["credit.locked"]["versions"][0]))
        types["credit.consumed"]["current_version"] = 3

    edit_registry(contracts, registry_changes)
    edit_schema(
        contracts,
        "lead-lifecycle/schema/payloads/lead.reached-v1.json",
        lambda s: s["properties"].update(
            tags={"type": "array", "prefixItems": [{"type": "string"}]}
        ),
    )
    edit_schema(
        contracts,
        "payment-flow/schema/payloads/payment.failed-v1.json",
        lambda s: s.update(unevaluatedProperties=False),
    )
    problems = problems_of(contracts)
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert "credit-reservation-lock/schema/payloads/credit.funded-v1.json: file not found" in text
    assert "credit.locked: duplicate version 1" in text
    assert "credit.consumed: current_version 3 is not among its versions [1]" in text
    assert (
        "lead-lifecycle/schema/payloads/lead.reached-v1.json: /properties/tags/prefixItems: "
        "keyword 'prefixItems'" in text
    )
    assert (
        "payment-flow/schema/payloads/payment.failed-v1.json: /unevaluatedProperties: "
        "keyword 'unevaluatedProperties'" in text
    )
    with pytest.raises(RegistryError) as info:
        Registry.load(contracts)
    assert "5 problem(s)" in str(info.value)


@pytest.mark.parametrize(
    ("addition", "pointer", "keyword"),
    [
        ({"dependentRequired": {"a": ["b"]}}, "/dependentRequired", "dependentRequired"),
        ({"dependentSchemas": {"a": {"required": ["b"]}}}, "/dependentSchemas", "dependentSchemas"),
        ({"$dynamicAnchor": "node"}, "/$dynamicAnchor", "$dynamicAnchor"),
        (
            {"allOf": [{"not": {"$dynamicRef": "#node"}}]},
            "/allOf/0/not/$dynamicRef",
            "$dynamicRef",
        ),
        (
            {"properties": {"x": {"type": "array", "contains": {}, "minContains": 2}}},
            "/properties/x/minContains",
            "minContains",
        ),
        ({"if": {"maxContains": 1}}, "/if/maxContains", "maxContains"),
        ({"$anchor": "top"}, "/$anchor", "$anchor"),
        (
            {"properties": {"x": {"contentSchema": {"type": "object"}}}},
            "/properties/x/contentSchema",
            "contentSchema",
        ),
        ({"unevaluatedItems": False}, "/unevaluatedItems", "unevaluatedItems"),
        ({"dependencies": {"a": ["b"]}}, "/dependencies", "dependencies"),
        (
            {"properties": {"x": {"items": [{"type": "string"}]}}},
            "/properties/x/items",
            "items",
        ),
        (
            {"properties": {"x": {"format": "phone-number"}}},
            "/properties/x/format",
            "format",
        ),
        (
            {"$defs": {"id": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/id"}}},
            "/properties/x/$ref",
            "$ref",
        ),
        (
            {
                "definitions": {"id": {"type": "string"}},
                "properties": {"x": {"$ref": "#/definitions/id", "minLength": 3}},
            },
            "/properties/x/$ref",
            "$ref",
        ),
        (
            {"patternProperties": {"^x": {"anyOf": [{"prefixItems": []}]}}},
            "/patternProperties/^x/anyOf/0/prefixItems",
            "prefixItems",
        ),
        (
            {"properties": {"a/b": {"prefixItems": []}}},
            "/properties/a~1b/prefixItems",
            "prefixItems",
        ),
    ],
)
def test_unenforced_keywords_are_refused(
    contracts: Path, addition: dict[str, Any], pointer: str, keyword: str
) -> None:
    def change(schema: dict[str, Any]) -> None:
        for key, value in addition.items():
            if isinstance(value, dict) and isinstance(schema.get(key), dict):
                schema[key].update(value)
            else:
                schema[key] = value

    edit_schema(contracts, LOCKED, change)
    problems = problems_of(contracts)
    assert any(p.startswith(f"{LOCKED}: {pointer}: keyword {keyword!r}") for p in problems), (
        problems
    )


def test_remote_ref_is_refused_without_fetching(
    contracts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_compile(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a schema with a remote $ref must not be compiled")

    monkeypatch.setattr(fastjsonschema, "compile", no_compile)
    edit_schema(
        contracts,
        LOCKED,
        lambda s: s["properties"].update(x={"$ref": "https://example.com/s.json"}),
    )
    problems = problems_of(contracts)
    assert any("/properties/x/$ref" in p and "remote" in p for p in problems), problems


def test_keyword_names_used_as_property_names_are_fine(contracts: Path) -> None:
    def change(schema: dict[str, Any]) -> None:
        schema["properties"]["prefixItems"] = {"type": "string"}
        schema["properties"]["unevaluatedProperties"] = {"type": "integer"}
        schema["properties"]["dependentRequired"] = {
            "type": "object",
            "properties": {"minContains": {"type": "boolean"}},
        }

    edit_schema(contracts, LOCKED, change)
    loaded = Registry.load(contracts)
    payload = loaded.example_payload("credit.locked")
    payload["prefixItems"] = "ok"
    payload["dependentRequired"] = {"minContains": True}
    loaded.validate_payload("credit.locked", 1, payload)


def test_local_definitions_ref_is_fine(contracts: Path) -> None:
    def change(schema: dict[str, Any]) -> None:
        schema["definitions"] = {"per": schema["properties"]["person_id"]}
        schema["properties"]["person_id"] = {"$ref": "#/definitions/per", "description": "d"}

    edit_schema(contracts, LOCKED, change)
    loaded = Registry.load(contracts)
    payload = loaded.example_payload("credit.locked")
    payload["person_id"] = "per_x"
    with pytest.raises(InvalidPayloadError):
        loaded.validate_payload("credit.locked", 1, payload)


def test_registry_shape_problems(contracts: Path) -> None:
    def change(types: dict[str, Any]) -> None:
        types["credit.locked"]["versions"][0]["status"] = "retired"
        types["credit.consumed"]["producer"] = "Revenue Team"
        types["credit.funded"].pop("subscribers")
        types["credit.purchased"]["color"] = "blue"
        types["lead.reached"]["versions"][0]["payload_schema"] = "../outside.json"
        types["lead.created"]["versions"] = []
        types["payment.failed"]["current_version"] = "1"
        types["Bad Type"] = {}
        types["credit.released"]["current_version"] = 1

    edit_registry(contracts, change)
    text = "\n".join(problems_of(contracts))
    assert "credit.locked: versions[0]: 'status' must be 'active' or 'deprecated'" in text
    assert "credit.consumed: 'producer' must be a lower-case slug" in text
    assert "credit.funded: missing keys ['subscribers']" in text
    assert "credit.purchased: unknown keys ['color']" in text
    assert "lead.reached: versions[0]: 'payload_schema' must be a relative path" in text
    assert "lead.created: 'versions' must be a non-empty list" in text
    assert "payment.failed: 'current_version' must be an integer >= 1" in text
    assert "event type 'Bad Type' is not dotted lower-case" in text
    assert "credit.released: current_version 1 is deprecated" in text


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"registry_version": 2, "event_types": {}}', "'registry_version' must be 1"),
        ('{"registry_version": 1, "event_types": []}', "'event_types' must be an object"),
        (
            '{"registry_version": 1, "event_types": {"a.b": {}, "a.b": {}}}',
            "duplicate JSON object keys ['a.b']",
        ),
    ],
)
def test_broken_registry_file(contracts: Path, content: str, expected: str) -> None:
    (contracts / "event-types-registry.json").write_text(content, encoding="utf-8")
    assert expected in "\n".join(problems_of(contracts))


def test_broken_schema_files(contracts: Path) -> None:
    base = "credit-reservation-lock/schema/payloads/"
    (contracts / base / "credit.funded-v1.json").write_text("{", encoding="utf-8")
    edit_schema(contracts, base + "credit.reserved-v1.json", lambda s: s.update(required="x"))
    edit_schema(
        contracts,
        base + "credit.purchased-v1.json",
        lambda s: s["properties"]["currency"].update(pattern="^[A-Z"),
    )
    edit_schema(
        contracts,
        base + "customer.handoff-v1.json",
        lambda s: s["examples"][0].update(person_id="per_1"),
    )
    edit_schema(contracts, base + "credit.consumed-v1.json", lambda s: s.pop("$schema"))
    edit_schema(contracts, base + "credit.forfeited-v1.json", lambda s: s.update(type="array"))
    text = "\n".join(problems_of(contracts))
    assert f"{base}credit.funded-v1.json: not valid JSON" in text
    assert f"{base}credit.reserved-v1.json: does not compile" in text
    assert f"{base}credit.purchased-v1.json: does not compile" in text
    assert (
        f"{base}customer.handoff-v1.json: /examples/0 fails its own schema at $.person_id" in text
    )
    assert f"{base}credit.consumed-v1.json: '$schema' must be" in text
    assert f"{base}credit.forfeited-v1.json: the payload schema must have" in text


def test_missing_envelope_and_directory(contracts: Path, tmp_path: Path) -> None:
    (contracts / "event-envelope/schema/envelope-v1.json").unlink()
    assert any("envelope-v1.json: file not found" in p for p in problems_of(contracts))
    assert "does not exist" in problems_of(tmp_path / "missing")[0]


# --------------------------------------------------------------------------- digests


def test_every_schema_has_a_digest_of_its_own(registry: Registry) -> None:
    digests = registry.payload_digests
    keys = {(t, v) for t in registry.event_types() for v in registry.versions(t)}
    assert set(digests) == keys
    assert len(set(digests.values())) == len(keys)  # 24 schemas, 24 digests
    assert all(-(2**63) <= d < 2**63 for d in digests.values())  # a PostgreSQL bigint
    assert registry.payload_digest("credit.locked", 1) == digests["credit.locked", 1]
    with pytest.raises(TypeError):
        digests["credit.locked", 1] = 0  # type: ignore[index]


def test_a_digest_follows_the_schema_and_not_where_it_was_loaded_from(
    registry: Registry, contracts: Path
) -> None:
    # Same schemas elsewhere, their keys written in another order: the same digests.
    edit_schema(contracts, LOCKED, lambda s: s.update(dict(reversed(list(s.items())))))
    assert Registry.load(contracts).payload_digests == registry.payload_digests


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["properties"]["locked_credits"].update(maximum=100),
        lambda s: s["required"].remove("locked_at"),
        lambda s: s.update(description="reworded"),
    ],
)
def test_any_change_to_a_schema_changes_its_digest_alone(
    registry: Registry, contracts: Path, change: Any
) -> None:
    edit_schema(contracts, LOCKED, change)
    changed = Registry.load(contracts).payload_digests
    assert changed["credit.locked", 1] != registry.payload_digests["credit.locked", 1]
    others = {k: v for k, v in changed.items() if k != ("credit.locked", 1)}
    assert others == {k: v for k, v in registry.payload_digests.items() if k in others}


def test_the_rules_of_the_check_are_part_of_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatch_aio._contracts import schema_rules

    schema = {"type": "object", "properties": {"a": {"type": "string", "format": "date-time"}}}
    before = schema_rules.schema_digest(schema)
    monkeypatch.setattr(schema_rules, "CHECK_RULES", schema_rules.CHECK_RULES + 1)
    assert schema_rules.schema_digest(schema) != before
    monkeypatch.undo()
    monkeypatch.setattr(fastjsonschema, "VERSION", "0.0.0")
    assert schema_rules.schema_digest(schema) != before
