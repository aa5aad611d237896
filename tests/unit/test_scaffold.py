"""Scaffolding a contracts directory: init_contracts and add_event_type (files only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from dispatch_aio import (
    ID_PROFILES,
    Registry,
    ScaffoldError,
    UnknownEventTypeError,
    add_event_type,
    init_contracts,
)
from dispatch_aio._registry import ENVELOPE_SCHEMA_PATH, REGISTRY_FILENAME
from dispatch_aio._resources import bundled_contracts_dir

UUID7 = "019ded47-d17d-79c6-9c32-96d046de240a"


class OrderPlaced(BaseModel):
    order_id: str
    amount_cents: int = Field(ge=0)
    currency: Literal["EUR", "USD"]


def envelope(**fields: Any) -> dict[str, Any]:
    data = {
        "event_id": f"evt_{UUID7}",
        "event_type": "order.placed",
        "schema_version": 1,
        "occurred_at": "2026-05-08T16:00:00Z",
        "tenant_id": "acme",
        "producer": "checkout",
        "subject": "42",
        "actor": "checkout",
        "payload": {},
    }
    data.update(fields)
    return data


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_init_writes_a_loadable_empty_registry(tmp_path: Path) -> None:
    root = init_contracts(tmp_path / "contracts")
    registry = Registry.load(root)
    assert registry.event_types() == []
    assert json.loads((root / REGISTRY_FILENAME).read_text()) == {
        "registry_version": 1,
        "event_types": {},
    }


def test_uuid7_profile_keeps_the_bundled_id_patterns(tmp_path: Path) -> None:
    root = init_contracts(tmp_path, id_profile="uuid7")
    ours = json.loads((root / ENVELOPE_SCHEMA_PATH).read_text())
    bundled = json.loads((bundled_contracts_dir() / ENVELOPE_SCHEMA_PATH).read_text())
    assert ours["properties"] == bundled["properties"]
    assert ours["required"] == bundled["required"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(envelope(), ours)
    jsonschema.validate(
        envelope(subject=f"ord_{UUID7}", tenant_id="tnt_acme", actor="system:checkout"), ours
    )


def test_plain_profile_takes_any_non_empty_subject_tenant_and_actor(tmp_path: Path) -> None:
    root = init_contracts(tmp_path, id_profile="plain")
    schema = json.loads((root / ENVELOPE_SCHEMA_PATH).read_text())
    jsonschema.validate(envelope(), schema)
    for field in ("subject", "tenant_id", "actor"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(envelope(**{field: ""}), schema)
    # The ids publish makes itself keep their format.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(envelope(event_id="42"), schema)
    for example in schema["examples"]:
        jsonschema.validate(example, schema)


def test_init_refuses_an_unknown_profile_and_an_existing_directory(tmp_path: Path) -> None:
    assert set(ID_PROFILES) == {"uuid7", "plain"}
    with pytest.raises(ScaffoldError, match="unknown id profile 'ulid'"):
        init_contracts(tmp_path / "a", id_profile="ulid")  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists()
    root = init_contracts(tmp_path / "b")
    before = snapshot(root)
    with pytest.raises(ScaffoldError, match="already holds"):
        init_contracts(root, id_profile="plain")
    assert snapshot(root) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScaffoldError, match="not a directory"):
        init_contracts(tmp_path / "file")


def test_add_event_type_writes_a_skeleton_and_its_entry(tmp_path: Path) -> None:
    root = init_contracts(tmp_path, id_profile="plain")
    path = add_event_type(root, "order.placed", producer="checkout", subscribers=["billing"])
    assert path == root / "order/schema/payloads/order.placed-v1.json"
    registry = Registry.load(root)
    entry = registry.entry("order.placed")
    assert (entry.contract, entry.producer) == ("order", "checkout")
    assert entry.subscribers == ("billing",)
    assert registry.current_version("order.placed") == 1
    registry.validate_payload("order.placed", 1, {})


def test_add_event_type_from_a_model_and_a_second_version(tmp_path: Path) -> None:
    root = init_contracts(tmp_path)
    add_event_type(root, "order.placed", producer="checkout", model=OrderPlaced)
    registry = Registry.load(root)
    registry.validate_payload(
        "order.placed", 1, OrderPlaced(order_id="1", amount_cents=5, currency="EUR").model_dump()
    )
    assert registry.compare_model("order.placed", OrderPlaced) == []
    add_event_type(root, "order.placed", producer="checkout", version=2)
    registry = Registry.load(root)
    assert registry.versions("order.placed") == [1, 2]
    assert registry.current_version("order.placed") == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event_type": "OrderPlaced"}, "dot-separated lower-case"),
        ({"event_type": "order"}, "dot-separated lower-case"),
        ({"event_type": "order." + "x" * 130}, "longer than 128"),
        ({"producer": "Check Out"}, "producer 'Check Out' is not a lower-case slug"),
        ({"version": 0}, "version must be an integer >= 1"),
        ({"version": True}, "version must be an integer >= 1"),
        ({"contract": "Orders"}, "contract 'Orders' is not a lower-case slug"),
        ({"event_type": "order_.placed"}, "contract 'order-' is not a lower-case slug"),
        ({"subscribers": ["billing", "billing"]}, "subscribers must be distinct"),
        (
            {"event_type": "order.placed", "producer": "other", "version": 2},
            "produced by 'checkout'",
        ),
        ({"event_type": "order.placed"}, "already has version 1"),
    ],
)
def test_add_event_type_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    root = init_contracts(tmp_path)
    add_event_type(root, "order.placed", producer="checkout")
    before = snapshot(root)
    arguments: dict[str, Any] = {"event_type": "order.shipped", "producer": "checkout"}
    arguments.update(kwargs)
    with pytest.raises(ScaffoldError, match=message):
        add_event_type(root, **arguments)
    assert snapshot(root) == before


def test_add_event_type_needs_a_healthy_contracts_directory(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match="init_contracts first"):
        add_event_type(tmp_path, "order.placed", producer="checkout")
    root = init_contracts(tmp_path / "c")
    (root / REGISTRY_FILENAME).write_text('{"registry_version": 2, "event_types": {}}')
    with pytest.raises(ScaffoldError, match="registry_version"):
        add_event_type(root, "order.placed", producer="checkout")


def test_a_schema_the_registry_refuses_is_rolled_back(tmp_path: Path) -> None:
    class WithBytes(BaseModel):
        blob: bytes  # JSON Schema format "binary", which nothing checks: refused

    root = init_contracts(tmp_path)
    before = snapshot(root)
    with pytest.raises(ScaffoldError, match=r"(?s)nothing written.*binary"):
        add_event_type(root, "file.uploaded", producer="files", model=WithBytes)
    assert snapshot(root) == before
    assert not (root / "file").exists()


def test_unknown_event_type_names_the_registry_and_the_way_to_another(tmp_path: Path) -> None:
    with pytest.raises(UnknownEventTypeError) as bundled:
        Registry.load().entry("order.placed")
    message = str(bundled.value)
    assert "(the bundled registry)" in message
    assert "registry=Registry.load(DIR)" in message
    assert "DISPATCH_AIO_CONTRACTS" in message
    root = init_contracts(tmp_path)
    with pytest.raises(UnknownEventTypeError, match=str(root / REGISTRY_FILENAME)):
        Registry.load(root).validate_payload("order.placed", 1, {})


def test_the_environment_variable_selects_a_scaffolded_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = init_contracts(tmp_path)
    add_event_type(root, "order.placed", producer="checkout")
    monkeypatch.setenv("DISPATCH_AIO_CONTRACTS", str(root))
    assert Registry.load().event_types() == ["order.placed"]
