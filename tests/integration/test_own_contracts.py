"""A new user with their own event types: from an empty directory to a typed handler.

The issue's flow at library level: ``init_contracts`` + ``add_event_type`` in an empty
directory, publish ``order.placed`` with a pydantic model, handle it with a handler
annotated ``Event[OrderPlaced]``; under both id profiles. Plus what goes with it: a
payload the model refuses is dead-lettered at once, ``@consumer.on`` without its event
type, and a publish on a starved pool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import anyio
import asyncpg
import pytest
import uuid_utils
from pydantic import BaseModel, Field

from dispatch_aio import (
    Consumer,
    DatabaseUnavailableError,
    DeadLetters,
    Dispatcher,
    Event,
    InvalidEnvelopeError,
    PoolExhaustedError,
    Registry,
    UsageError,
    add_event_type,
    init_contracts,
)
from dispatch_aio.pytest_plugin import TestPostgres
from dispatch_aio.testing import assert_model_matches, drain, instant_retries, published_events

from .tcp_proxy import TcpProxy
from .test_consumer_faults import _upstream

pytestmark = pytest.mark.anyio


class OrderPlaced(BaseModel):
    """The user's own payload model."""

    order_id: str
    amount_cents: int = Field(ge=0)
    currency: Literal["EUR", "USD"]


class SmallOrder(BaseModel):
    """A stricter view of the same payload: the schema allows what this refuses."""

    order_id: str
    amount_cents: int = Field(le=100)
    currency: Literal["EUR", "USD"]


SEEN: list[Event[OrderPlaced]] = []


async def on_placed(event: Event[OrderPlaced], conn: asyncpg.Connection) -> None:
    SEEN.append(event)
    await conn.execute(
        "INSERT INTO orders (order_id, amount_cents) VALUES ($1, $2)",
        event.payload.order_id,
        event.payload.amount_cents,
    )


@pytest.mark.parametrize(
    ("profile", "tenant", "subject"),
    [
        ("plain", "acme", "42"),
        ("uuid7", "tnt_acme", f"ord_{uuid_utils.uuid7()}"),
    ],
)
async def test_new_user_own_types(
    tmp_path: Path, dispatch_pool: asyncpg.Pool, profile: str, tenant: str, subject: str
) -> None:
    root = tmp_path / "contracts"
    init_contracts(root, id_profile=profile)  # type: ignore[arg-type]
    add_event_type(root, "order.placed", producer="checkout", model=OrderPlaced)
    registry = Registry.load(root)
    assert_model_matches(OrderPlaced, "order.placed", registry=registry)
    await dispatch_pool.execute("CREATE TABLE orders (order_id text PRIMARY KEY, amount_cents int)")

    dispatcher = Dispatcher(dispatch_pool, producer="checkout", tenant_id=tenant, registry=registry)
    placed = OrderPlaced(order_id="o-1", amount_cents=1250, currency="EUR")
    envelope = await dispatcher.publish(
        "order.placed", placed, subject=subject, actor="system:checkout"
    )
    assert envelope.payload == {"order_id": "o-1", "amount_cents": 1250, "currency": "EUR"}
    [stored] = await published_events(dispatch_pool, event_type="order.placed")
    assert (stored.subject, stored.tenant_id) == (subject, tenant)

    SEEN.clear()
    consumer = Consumer(dispatch_pool, name="orders", registry=registry)
    consumer.on("order.placed")(on_placed)
    result = await drain(consumer)
    assert (result.handled, result.dead_lettered) == (1, 0)
    [event] = SEEN
    assert isinstance(event.payload, OrderPlaced)
    assert event.payload == placed
    assert (event.subject, event.event_id, event.attempt) == (subject, envelope.event_id, 1)
    assert await dispatch_pool.fetchval("SELECT amount_cents FROM orders") == 1250


async def test_the_seed_profile_refuses_a_plain_subject(
    tmp_path: Path, dispatch_pool: asyncpg.Pool
) -> None:
    root = init_contracts(tmp_path, id_profile="uuid7")
    add_event_type(root, "order.placed", producer="checkout", model=OrderPlaced)
    registry = Registry.load(root)
    dispatcher = Dispatcher(
        dispatch_pool, producer="checkout", tenant_id="tnt_acme", registry=registry
    )
    placed = OrderPlaced(order_id="o-1", amount_cents=1, currency="EUR")
    with pytest.raises(InvalidEnvelopeError, match=r"\$\.subject"):
        await dispatcher.publish("order.placed", placed, subject="42", actor="system:checkout")
    assert await published_events(dispatch_pool) == []


async def test_a_skeleton_filled_in_by_hand_and_publish_many_with_models(
    tmp_path: Path, dispatch_pool: asyncpg.Pool
) -> None:
    root = init_contracts(tmp_path, id_profile="plain")
    path = add_event_type(root, "order.placed", producer="checkout")
    schema = json.loads(path.read_text())
    schema["properties"] = {
        "order_id": {"type": "string"},
        "amount_cents": {"type": "integer", "minimum": 0},
        "currency": {"type": "string", "enum": ["EUR"]},  # narrower than the model
    }
    schema["required"] = ["order_id", "amount_cents", "currency"]
    path.write_text(json.dumps(schema))
    registry = Registry.load(root)
    [mismatch] = registry.compare_model("order.placed", OrderPlaced)
    assert (mismatch.path, mismatch.kind) == ("$.payload.currency", "enum")

    dispatcher = Dispatcher(dispatch_pool, producer="checkout", tenant_id="acme", registry=registry)
    envelopes = await dispatcher.publish_many(
        [
            {
                "event_type": "order.placed",
                "payload": OrderPlaced(order_id=str(n), amount_cents=n, currency="EUR"),
                "subject": str(n),
                "actor": "checkout",
            }
            for n in range(3)
        ]
    )
    assert [e.payload["amount_cents"] for e in envelopes] == [0, 1, 2]


async def test_a_payload_the_model_refuses_is_dead_lettered_at_once(
    tmp_path: Path, dispatch_pool: asyncpg.Pool
) -> None:
    root = init_contracts(tmp_path, id_profile="plain")
    add_event_type(root, "order.placed", producer="checkout", model=OrderPlaced)
    registry = Registry.load(root)
    dispatcher = Dispatcher(dispatch_pool, producer="checkout", tenant_id="acme", registry=registry)
    for amount in (50, 500):  # the schema takes both; SmallOrder refuses 500
        await dispatcher.publish(
            "order.placed",
            OrderPlaced(order_id=f"o-{amount}", amount_cents=amount, currency="USD"),
            subject="7",
            actor="checkout",
        )
    handled: list[SmallOrder] = []
    consumer = Consumer(dispatch_pool, name="small", registry=registry, **instant_retries())

    @consumer.on("order.placed")
    async def on_small(event: Event[SmallOrder]) -> None:
        handled.append(event.payload)

    result = await drain(consumer)
    assert (result.handled, result.dead_lettered, result.retried) == (1, 1, 0)
    assert handled == [SmallOrder(order_id="o-50", amount_cents=50, currency="USD")]
    [letter] = (await DeadLetters(dispatch_pool).list("small")).items
    assert (letter.error_type, letter.attempts) == ("ValidationError", 0)
    assert "amount_cents" in letter.error_message


async def test_on_without_its_event_type_says_what_to_write(dispatch_pool: asyncpg.Pool) -> None:
    consumer = Consumer(dispatch_pool, name="orders")
    with pytest.raises(UsageError, match=r'write @consumer\.on\("order\.placed"\)'):

        @consumer.on  # type: ignore[arg-type]
        async def handler(event: Event) -> None: ...

    assert consumer.event_types == []


async def test_a_publish_on_a_starved_pool_raises_within_its_timeout(
    dispatch_dsn: str, dispatch_registry: Registry
) -> None:
    async with asyncpg.create_pool(dispatch_dsn, min_size=1, max_size=1) as pool:
        dispatcher = Dispatcher(
            pool,
            producer="tests",
            tenant_id="tnt_tests",
            registry=dispatch_registry,
            acquire_timeout=0.2,
        )
        payload = dispatch_registry.example_payload("credit.locked")
        subject = f"per_{uuid_utils.uuid7()}"
        async with pool.acquire():  # the only connection, held: the pool is starved
            with anyio.fail_after(30):  # never a hang
                with pytest.raises(PoolExhaustedError, match="all 1 connections") as caught:
                    await dispatcher.publish(
                        "credit.locked", payload, subject=subject, actor="system:tests"
                    )
                with pytest.raises(PoolExhaustedError):
                    await dispatcher.publish_many(
                        [
                            {
                                "event_type": "credit.locked",
                                "payload": payload,
                                "subject": subject,
                                "actor": "system:tests",
                            }
                        ]
                    )
        assert isinstance(caught.value, DatabaseUnavailableError)
        assert (caught.value.max_size, caught.value.timeout) == (1, 0.2)
        # Free again: the same dispatcher publishes.
        await dispatcher.publish("credit.locked", payload, subject=subject, actor="system:tests")
        assert len(await published_events(pool)) == 1


def test_acquire_timeout_must_be_positive() -> None:
    from dispatch_aio import ConfigurationError

    with pytest.raises(ConfigurationError, match="acquire_timeout"):
        Dispatcher(None, producer="tests", tenant_id="tnt_tests", acquire_timeout=0)


async def test_a_server_that_does_not_answer_is_unavailable_not_exhausted(
    dispatch_postgres: TestPostgres, dispatch_dsn: str, dispatch_registry: Registry
) -> None:
    """The acquire timeout also covers opening a connection: a silent server is told apart."""
    async with TcpProxy(**_upstream(dispatch_postgres)) as proxy:  # type: ignore[arg-type]
        pool = await asyncpg.create_pool(min_size=0, max_size=2, **proxy.connect_args(dispatch_dsn))
        try:
            dispatcher = Dispatcher(
                pool,
                producer="tests",
                tenant_id="tnt_tests",
                registry=dispatch_registry,
                acquire_timeout=0.3,
            )
            proxy.blackhole()
            with anyio.fail_after(30), pytest.raises(DatabaseUnavailableError) as caught:
                await dispatcher.publish(
                    "credit.locked",
                    dispatch_registry.example_payload("credit.locked"),
                    subject=f"per_{uuid_utils.uuid7()}",
                    actor="system:tests",
                )
            assert not isinstance(caught.value, PoolExhaustedError)
            assert "no connection to the database within 0.3s" in str(caught.value)
        finally:
            pool.terminate()
