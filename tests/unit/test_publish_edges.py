"""Building an event and constructing the public objects: only the package's own errors."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import pytest

from dispatch_aio import (
    Consumer,
    ConsumerConfig,
    DeadLetters,
    Dispatcher,
    DispatchError,
    InvalidArgumentError,
    InvalidEnvelopeError,
    InvalidIdentifierError,
    InvalidPayloadError,
    InvalidSettingError,
    Registry,
    UnknownEventTypeError,
)
from dispatch_aio._envelope import format_timestamp
from dispatch_aio._resources import bundled_contracts_dir

FREE_FORM = "custom.free_form"
SUBJECT = "per_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d"


def build(dispatcher: Dispatcher, event_type: Any = "credit.locked", **kwargs: Any) -> Any:
    payload = kwargs.pop("payload", None)
    if payload is None:
        payload = dispatcher.registry.example_payload("credit.locked")
    return dispatcher.build(event_type, payload, subject=SUBJECT, actor="system:tests", **kwargs)


@pytest.mark.parametrize("event_type", [["credit.locked"], {"a": 1}, None, 3])
def test_an_event_type_that_is_not_a_string(dispatcher: Dispatcher, event_type: Any) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        build(dispatcher, event_type)
    assert isinstance(caught.value, TypeError)


@pytest.mark.parametrize("version", [[1], {1: 1}, "1", 1.0, True])
def test_a_schema_version_that_is_not_an_int(dispatcher: Dispatcher, version: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        build(dispatcher, schema_version=version)


def test_registry_lookups_of_unhashable_keys(registry: Registry) -> None:
    with pytest.raises(UnknownEventTypeError):
        registry.current_version(["credit.locked"])  # type: ignore[arg-type]
    with pytest.raises(DispatchError):
        registry.validate_payload("credit.locked", [1], {})  # type: ignore[arg-type]
    with pytest.raises(DispatchError):
        registry.payload_schema("credit.locked", {1: 2})  # type: ignore[arg-type]


class _OutOfRange(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=25)


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 1, 1, tzinfo=_OutOfRange()),
        datetime.max,
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))),
        datetime(2026, 1, 1),
    ],
    ids=["bad offset", "max naive", "max", "min", "before year 1", "after 9999", "naive"],
)
def test_timestamps_outside_the_accepted_range(dispatcher: Dispatcher, when: datetime) -> None:
    with pytest.raises(InvalidEnvelopeError) as caught:
        build(dispatcher, occurred_at=when)
    assert caught.value.path == "$.occurred_at"


@pytest.mark.parametrize("year", [1, 42, 999])
def test_years_below_1000_are_accepted_and_zero_padded(dispatcher: Dispatcher, year: int) -> None:
    when = datetime(year, 6, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    envelope, _ = build(dispatcher, occurred_at=when)
    assert envelope.occurred_at == when
    assert format_timestamp(when) == f"{year:04d}-06-01T10:00:00.000000Z"
    assert envelope.to_json_dict()["occurred_at"].startswith(f"{year:04d}-")


@pytest.fixture
def free_form_registry(tmp_path: Path) -> Registry:
    """The user's own contracts: the bundled ones plus a type whose payload is any object."""
    root = tmp_path / "contracts"
    shutil.copytree(bundled_contracts_dir(), root)
    schema = root / "custom" / f"{FREE_FORM}-v1.json"
    schema.parent.mkdir()
    schema.write_text(
        json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"})
    )
    registry_file = root / "event-types-registry.json"
    data = json.loads(registry_file.read_text())
    data["event_types"][FREE_FORM] = {
        "contract": "custom",
        "producer": "tests",
        "subscribers": ["tests"],
        "current_version": 1,
        "versions": [
            {"version": 1, "status": "active", "payload_schema": f"custom/{FREE_FORM}-v1.json"}
        ],
    }
    registry_file.write_text(json.dumps(data))
    return Registry.load(root)


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_a_deeply_nested_payload_under_a_free_form_schema(
    free_form_registry: Registry, depth: int
) -> None:
    dispatcher = Dispatcher(None, producer="tests", tenant_id="tnt_a", registry=free_form_registry)
    payload: dict[str, Any] = {}
    for _ in range(depth):
        payload = {"n": payload}
    with pytest.raises(InvalidPayloadError, match="nested deeper than 64"):
        build(dispatcher, FREE_FORM, payload=payload)
    shallow: dict[str, Any] = {}
    for _ in range(60):
        shallow = {"n": shallow}
    envelope, _ = build(dispatcher, FREE_FORM, payload=shallow)
    assert envelope.event_type == FREE_FORM


def test_the_envelope_schema_is_not_read_again_after_loading(tmp_path: Path) -> None:
    root = tmp_path / "contracts"
    shutil.copytree(bundled_contracts_dir(), root)
    registry = Registry.load(root)
    shutil.rmtree(root)
    dispatcher = Dispatcher(None, producer="tests", tenant_id="tnt_a", registry=registry)
    envelope, _ = build(dispatcher)
    assert envelope.event_type == "credit.locked"


@pytest.mark.parametrize("schema", ["a\ud800", "\ud800", "public\n", None, ["public"], ""])
def test_odd_schema_names_are_invalid_identifiers(registry: Registry, schema: Any) -> None:
    with pytest.raises(InvalidIdentifierError):
        Dispatcher(None, producer="tests", tenant_id="tnt_a", registry=registry, schema=schema)
    with pytest.raises(InvalidIdentifierError):
        DeadLetters(None, schema)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "limit", ["256", float("nan"), float("inf"), 0, -1, None, 1.5, True, [256]]
)
def test_max_payload_bytes_must_be_a_positive_int(registry: Registry, limit: Any) -> None:
    with pytest.raises(InvalidSettingError) as caught:
        Dispatcher(
            None, producer="tests", tenant_id="tnt_a", registry=registry, max_payload_bytes=limit
        )
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "options",
    [
        {"db_schema": None},
        {"db_schema": "a\ud800"},
        {"concurrency": "many"},
        {"concurrency": 0},
        {"poll_interval": float("inf")},
        {"retry_delays": (1.0, float("nan"))},
        {"retry_delays": (float("inf"),)},
        {"no_such_option": 1},
    ],
)
def test_consumer_settings_raise_invalid_setting_error(
    registry: Registry, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidSettingError):
        Consumer(None, "coaching", registry=registry, **options)  # type: ignore[arg-type]
    with pytest.raises(InvalidSettingError):
        ConsumerConfig(name="coaching", **options)


@pytest.mark.parametrize("name", [None, 3, "Bad Name", "x\n", "\ud800"])
def test_bad_consumer_names(registry: Registry, name: Any) -> None:
    with pytest.raises(DispatchError):
        Consumer(None, name, registry=registry)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event_type", "options"),
    [
        (["credit.locked"], {}),
        ("credit.locked", {"timeout": float("nan")}),
        ("credit.locked", {"timeout": "soon"}),
        ("credit.locked", {"retry_delays": [float("inf")]}),
        ("credit.locked", {"retry_delays": ["x"]}),
        ("credit.locked", {"retry_delays": 5}),
    ],
)
def test_on_raises_only_dispatch_errors(
    registry: Registry, event_type: Any, options: dict[str, Any]
) -> None:
    consumer = Consumer(None, "coaching", registry=registry)  # type: ignore[arg-type]
    with pytest.raises(DispatchError):
        consumer.on(event_type, **options)
