"""The shop, tested with dispatch-aio's pytest fixtures and ``dispatch_aio.testing`` only."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
import uuid_utils
from dispatch_aio.testing import drain, instant_retries, published_events

from shop import worker
from shop.app import create_app
from shop.schema import create_tables

pytestmark = pytest.mark.anyio


def order(person_id: str, amount_cents: int, currency: str = "EUR") -> dict[str, Any]:
    return {
        "person_id": person_id,
        "amount_cents": amount_cents,
        "currency": currency,
        "payment_method": "card",
        "provider": "stripe",
        "provider_ref": "pi_3PqR7sK2eZvKYlo21fG0aB4c",
    }


async def place(pool: asyncpg.Pool, *orders: dict[str, Any]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=create_app(pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        return [await client.post("/orders", json=body) for body in orders]


async def test_an_order_publishes_payment_received(dispatch_pool: asyncpg.Pool) -> None:
    await create_tables(dispatch_pool)
    person = f"per_{uuid_utils.uuid7()}"

    [response] = await place(dispatch_pool, order(person, 36_000))

    assert response.status_code == 201, response.text
    body = response.json()
    [event] = await published_events(dispatch_pool, event_type="payment.received")
    assert event.event_id == body["event_id"]
    assert event.subject == person
    assert event.producer == "shop"
    assert event.payload["payment_id"] == body["payment_id"]
    assert event.payload["credit_purchase_id"] == body["order_id"]
    assert event.payload["amount_cents"] == 36_000
    stored = await dispatch_pool.fetchval(
        "SELECT person_id FROM shop_order WHERE order_id = $1", body["order_id"]
    )
    assert stored == person


async def test_a_rejected_order_writes_and_publishes_nothing(dispatch_pool: asyncpg.Pool) -> None:
    await create_tables(dispatch_pool)

    [response] = await place(dispatch_pool, order("not-a-person", 100))

    assert response.status_code == 422
    assert await published_events(dispatch_pool) == []
    assert await dispatch_pool.fetchval("SELECT count(*) FROM shop_order") == 0


async def test_the_worker_projects_every_payment_once(dispatch_pool: asyncpg.Pool) -> None:
    await create_tables(dispatch_pool)
    alice, bob = f"per_{uuid_utils.uuid7()}", f"per_{uuid_utils.uuid7()}"
    responses = await place(
        dispatch_pool,
        order(alice, 1_000),
        order(alice, 2_500),
        order(bob, 700),
        order(bob, 300, currency="USD"),
    )
    assert [r.status_code for r in responses] == [201] * 4

    result = await drain(worker.consumer(dispatch_pool, **instant_retries()))

    assert (result.handled, result.retried, result.dead_lettered) == (4, 0, 0)
    rows = await dispatch_pool.fetch(
        "SELECT person_id, currency, payments, total_cents FROM shop_revenue_by_person"
    )
    assert {tuple(r) for r in rows} == {
        (alice, "EUR", 2, 3_500),
        (bob, "EUR", 1, 700),
        (bob, "USD", 1, 300),
    }
    # A restarted worker finds nothing left to do: nothing is counted twice.
    again = await drain(worker.consumer(dispatch_pool, **instant_retries()))
    assert again.handled == 0
    total = await dispatch_pool.fetchval("SELECT sum(total_cents) FROM shop_revenue_by_person")
    assert total == 4_500


async def test_a_failing_projection_is_dead_lettered_and_writes_nothing(
    dispatch_pool: asyncpg.Pool,
) -> None:
    await create_tables(dispatch_pool)
    [response] = await place(dispatch_pool, order(f"per_{uuid_utils.uuid7()}", 500))
    assert response.status_code == 201
    # Break the projection: every attempt fails, and its writes roll back.
    await dispatch_pool.execute("ALTER TABLE shop_revenue_by_person RENAME TO shop_revenue_gone")

    result = await drain(worker.consumer(dispatch_pool, **instant_retries(2)))

    assert (result.handled, result.retried, result.dead_lettered) == (0, 2, 1)
    assert await dispatch_pool.fetchval("SELECT count(*) FROM shop_revenue_gone") == 0
