"""``dispatch-aio contracts init|new|check`` in a subprocess, from an empty directory."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event, Registry
from dispatch_aio.testing import drain

from .test_cli_base import assert_error, cli

pytestmark = pytest.mark.anyio

MODELS = textwrap.dedent(
    """
    from pydantic import BaseModel, Field

    class OrderPlaced(BaseModel):
        order_id: str
        amount_cents: int = Field(ge=0)
    """
)

ELSEWHERE = textwrap.dedent(
    """
    from typing import Literal
    from pydantic import BaseModel

    class OrderPlaced(BaseModel):  # another service's idea of the same event
        order_id: int
        amount_cents: int
        currency: Literal["EUR", "USD"]
    """
)


async def test_a_new_user_makes_contracts_publishes_and_consumes(
    tmp_path: Path, dispatch_pool: asyncpg.Pool
) -> None:
    (tmp_path / "shop_models.py").write_text(MODELS)
    (tmp_path / "shop_elsewhere.py").write_text(ELSEWHERE)
    contracts = tmp_path / "contracts"

    made = await cli("contracts", "init", str(contracts), "--id-profile", "plain", cwd=tmp_path)
    assert made.code == 0, made
    assert "event-types-registry.json" in made.out
    added = await cli(
        "contracts",
        "new",
        "order.placed",
        "--dir",
        str(contracts),
        "--producer",
        "checkout",
        "--model",
        "shop_models:OrderPlaced",
        "--subscriber",
        "billing",
        cwd=tmp_path,
    )
    assert added.code == 0, added
    assert "order/schema/payloads/order.placed-v1.json" in added.out
    skeleton = await cli(
        "contracts", "new", "order.cancelled", "--dir", str(contracts), "--producer", "checkout"
    )
    assert skeleton.code == 0, skeleton
    again = await cli(
        "contracts", "new", "order.placed", "--dir", str(contracts), "--producer", "checkout"
    )
    assert_error(again, 1, "order.placed")  # version 1 exists: refused, nothing written

    checked = await cli(
        "contracts", "check", str(contracts), "--models", "shop_models", cwd=tmp_path
    )
    assert checked.code == 0, checked
    assert "1 models agree" in checked.out

    disagree = await cli(
        "contracts", "check", str(contracts), "--models", "shop_elsewhere", cwd=tmp_path
    )
    assert disagree.code == 1, disagree
    assert "order.placed (OrderPlaced): $.payload.order_id: type:" in disagree.out
    assert "$.payload.currency: field:" in disagree.out
    assert "2 mismatch(es)" in disagree.err

    registry = Registry.load(contracts)
    entry = json.loads((contracts / "event-types-registry.json").read_text())
    assert entry["event_types"]["order.placed"]["subscribers"] == ["billing"]
    spec = importlib.util.spec_from_file_location("shop_models", tmp_path / "shop_models.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.OrderPlaced

    checkout = Dispatcher(dispatch_pool, producer="checkout", tenant_id="acme", registry=registry)
    sent = await checkout.publish(
        "order.placed", model(order_id="A-1", amount_cents=1250), subject="42", actor="user:7"
    )
    billing = Consumer(dispatch_pool, name="billing", registry=registry)
    amounts: list[int] = []

    async def bill(event: Event[model], conn: asyncpg.Connection) -> None:  # type: ignore[valid-type]
        assert isinstance(event.payload, model)
        amounts.append(event.payload.amount_cents)

    billing.on("order.placed")(bill)
    assert (await drain(billing)).handled == 1
    assert amounts == [1250]
    assert sent.subject == "42"


async def test_contracts_usage_errors_are_one_line(tmp_path: Path) -> None:
    assert_error(
        await cli("contracts", "init", str(tmp_path / "c"), "--id-profile", "nanoid"), 2, "nanoid"
    )
    made = await cli("contracts", "init", str(tmp_path / "c"))
    assert made.code == 0, made
    assert_error(await cli("contracts", "init", str(tmp_path / "c")), 1, "already holds")
    assert_error(
        await cli(
            "contracts",
            "new",
            "order.placed",
            "--dir",
            str(tmp_path / "c"),
            "--producer",
            "x",
            "--model",
            "no_such_module:Model",
        ),
        2,
        "cannot import",
    )
    assert_error(
        await cli("contracts", "check", "--models", "json"), 1, "no payload models found in json"
    )
