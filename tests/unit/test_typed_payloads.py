"""Typed payloads without a database: Event[Model], reading the model off a handler,
converting an event, and comparing a model with a payload schema."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, Literal

import pydantic
import pytest
from pydantic import BaseModel, Field

from dispatch_aio import Event, Registry, UsageError, compare_model_to_schema
from dispatch_aio._typed import payload_model_of, typed_event_class, with_model_payload
from dispatch_aio.testing import assert_model_matches


class OrderPlaced(BaseModel):
    order_id: str
    amount_cents: int = Field(ge=0)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Line(BaseModel):
    sku: str
    qty: int


def event(payload: dict[str, Any]) -> Event:
    return Event(
        event_id="evt_x",
        event_type="order.placed",
        schema_version=1,
        occurred_at=datetime(2026, 5, 8, tzinfo=UTC),
        tenant_id="acme",
        producer="checkout",
        subject="42",
        actor="checkout",
        payload=payload,
        position=7,
        attempt=2,
    )


# --------------------------------------------------------------------------- Event[Model]


def test_bare_event_keeps_dict_payloads() -> None:
    assert event({"a": 1}).payload == {"a": 1}
    with pytest.raises(pydantic.ValidationError):
        event([1])  # type: ignore[arg-type]


def test_with_model_payload_parses_and_keeps_every_other_field() -> None:
    plain = event({"order_id": "1", "amount_cents": 5})
    typed = with_model_payload(plain, OrderPlaced)
    assert isinstance(typed, Event)
    assert type(typed) is typed_event_class(OrderPlaced) is Event[OrderPlaced]
    assert typed.payload == OrderPlaced(order_id="1", amount_cents=5)
    assert typed.model_dump(exclude={"payload"}) == plain.model_dump(exclude={"payload"})
    assert typed.to_json_dict() == plain.to_json_dict()  # JSON data again, as published
    again = typed.model_copy(update={"attempt": 3})
    assert (again.attempt, again.payload) == (3, typed.payload)
    with pytest.raises(pydantic.ValidationError):
        with_model_payload(event({"order_id": "1", "amount_cents": -1}), OrderPlaced)


# --------------------------------------------------------------------------- payload_model_of


async def typed_handler(event: Event[OrderPlaced]) -> None: ...


async def typed_with_conn(event: Event[OrderPlaced], conn: NotImportedAnywhere) -> None: ...  # type: ignore[name-defined]  # noqa: F821


async def plain_handler(event: Event) -> None: ...


async def dict_handler(event: Event[dict[str, Any]]) -> None: ...


async def bare_handler(event) -> None: ...  # type: ignore[no-untyped-def]


def test_payload_model_of_reads_string_annotations() -> None:
    # This module uses `from __future__ import annotations`: every annotation is text.
    assert payload_model_of(typed_handler) is OrderPlaced
    assert payload_model_of(typed_with_conn) is OrderPlaced
    assert payload_model_of(plain_handler) is None
    assert payload_model_of(dict_handler) is None
    assert payload_model_of(bare_handler) is None


def test_payload_model_of_real_annotations_and_closures() -> None:
    class Local(BaseModel):
        n: int

    async def handler(event: Event[Local]) -> None:
        assert Local  # a closure variable: the annotation can be resolved

    handler.__annotations__["event"] = Event[Local]
    assert payload_model_of(handler) is Local
    handler.__annotations__["event"] = "Event[Local]"
    assert payload_model_of(handler) is Local


def test_payload_model_of_explains_what_it_cannot_use() -> None:
    async def unresolvable(event: Event[Hidden]) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(UsageError, match="define the payload model at module level"):
        payload_model_of(unresolvable)

    # Names imported under TYPE_CHECKING only: a dict payload needs no resolving.
    async def hidden_dict(event: Event[Dict[str, Any]]) -> None: ...  # type: ignore[name-defined]  # noqa: F821
    async def hidden_event(event: HiddenEvent) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    assert payload_model_of(hidden_dict) is None
    assert payload_model_of(hidden_event) is None

    async def not_a_model(event: Event[int]) -> None: ...  # type: ignore[type-var]

    not_a_model.__annotations__["event"] = "Event[int]"
    with pytest.raises(UsageError, match="must be a pydantic BaseModel"):
        payload_model_of(not_a_model)


# --------------------------------------------------------------------------- comparison


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["order_id", "amount_cents", "currency", "lines"],
    "properties": {
        "order_id": {"type": "string"},
        "amount_cents": {"type": "integer", "minimum": 0},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
        "color": {"$ref": "#/definitions/color"},
        "note": {"type": "string"},
        "lines": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
            },
        },
    },
    "definitions": {"color": {"type": "string", "enum": ["red", "blue"]}},
}


def test_an_agreeing_model_has_no_mismatches() -> None:
    class Agrees(BaseModel):
        order_id: str
        amount_cents: int
        currency: Literal["EUR", "USD"]
        color: Color = Color.RED
        note: str = ""
        lines: list[Line]

    assert compare_model_to_schema(Agrees, SCHEMA) == []


def test_every_kind_of_mismatch_names_its_field() -> None:
    class Disagrees(BaseModel):
        order_id: int  # type
        currency: Literal["EUR", "GBP"]  # enum
        color: Literal["red", "green"] | None = None  # enum, and null
        note: str  # required by the model only
        coupon: str = ""  # a field the closed schema refuses
        lines: list[dict[str, Any]]  # free-form items: nothing to compare
        # amount_cents missing: required by the schema

    found = {(m.path, m.kind): m for m in compare_model_to_schema(Disagrees, SCHEMA)}
    assert set(found) == {
        ("$.payload.order_id", "type"),
        ("$.payload.currency", "enum"),
        ("$.payload.color", "type"),
        ("$.payload.color", "enum"),
        ("$.payload.note", "required"),
        ("$.payload.coupon", "field"),
        ("$.payload.amount_cents", "required"),
    }
    assert str(found["$.payload.order_id", "type"]) == (
        "$.payload.order_id: type: the model says integer, the schema string"
    )
    assert "'GBP'" in found["$.payload.currency", "enum"].model
    assert found["$.payload.color", "type"].model == "null or string"


def test_nested_mismatches_carry_their_path() -> None:
    class BadLine(BaseModel):
        sku: str
        qty: float

    class Nested(BaseModel):
        order_id: str
        amount_cents: int
        currency: Literal["EUR", "USD"]
        lines: list[BadLine]

    [mismatch] = compare_model_to_schema(Nested, SCHEMA)
    assert (mismatch.path, mismatch.kind) == ("$.payload.lines[].qty", "type")


def test_the_registry_and_test_helper_run_the_comparison() -> None:
    class CreditLocked(BaseModel):
        credit_reservation_id: str
        lesson_id: str
        person_id: str
        locked_credits: int
        locked_at: datetime

    registry = Registry.load()
    assert registry.compare_model("credit.locked", CreditLocked) == []
    assert_model_matches(CreditLocked, "credit.locked", registry=registry)

    class Wrong(BaseModel):
        credit_reservation_id: str
        locked_credits: str

    with pytest.raises(AssertionError, match=r"\$\.payload\.locked_credits: type"):
        assert_model_matches(Wrong, "credit.locked", version=1)


def test_payload_models_of_a_module_by_name_or_listed() -> None:
    import types

    from dispatch_aio._contracts.models import payload_models_in

    class CreditLocked(BaseModel):
        credit_reservation_id: int  # disagrees with the schema

    class CreditNoteIssued(BaseModel):
        n: int

    module = types.ModuleType("models")
    module.CreditLocked = CreditLocked  # type: ignore[attr-defined]
    module.CreditNoteIssued = CreditNoteIssued  # type: ignore[attr-defined]
    module.Unrelated = Line  # type: ignore[attr-defined]
    found = payload_models_in(module, ["credit.locked", "credit_note.issued", "credit.consumed"])
    assert found == {"credit.locked": CreditLocked, "credit_note.issued": CreditNoteIssued}

    module.PAYLOAD_MODELS = {"credit.consumed": Line, "x.y": int}  # type: ignore[attr-defined]
    assert payload_models_in(module, ["credit.locked"]) == {"credit.consumed": Line}

    registry = Registry.load()
    report = registry.compare_models({"credit.locked": CreditLocked})
    paths = {(m.path, m.kind) for m in report["credit.locked"]}
    assert ("$.payload.credit_reservation_id", "type") in paths
    assert ("$.payload.lesson_id", "required") in paths
