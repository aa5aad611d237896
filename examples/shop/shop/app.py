"""The shop's HTTP side: placing an order writes the order and publishes ``payment.received``.

Both happen in one transaction (a transactional outbox): the event exists if and only if
the order row does. Run it with ``DATABASE_URL=... uvicorn shop.app:app``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import uuid_utils
from dispatch_aio import Dispatcher, EventValidationError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

PRODUCER = "shop"
TENANT = "tnt_shop"
UUID7 = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


class OrderIn(BaseModel):
    """A paid order, as the checkout page sends it."""

    person_id: str = Field(pattern=f"^per_{UUID7}$")
    amount_cents: int = Field(ge=0)
    currency: str = Field(pattern="^[A-Z]{3}$")
    payment_method: Literal["card", "bank_transfer", "cash", "check", "credit_balance"]
    provider: Literal["square", "stripe", "manual"]
    provider_ref: str = Field(min_length=1)


class OrderOut(BaseModel):
    order_id: str
    payment_id: str
    event_id: str


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid_utils.uuid7()}"


def create_app(pool: asyncpg.Pool | None = None) -> FastAPI:
    """The app; on ``pool`` if given (tests), else on a pool made from ``DATABASE_URL``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if pool is not None:
            yield
            return
        async with asyncpg.create_pool(os.environ["DATABASE_URL"]) as own:
            app.state.pool = own
            app.state.dispatcher = Dispatcher(own, producer=PRODUCER, tenant_id=TENANT)
            yield

    app = FastAPI(title="shop", lifespan=lifespan)
    if pool is not None:
        app.state.pool = pool
        app.state.dispatcher = Dispatcher(pool, producer=PRODUCER, tenant_id=TENANT)

    @app.exception_handler(EventValidationError)
    async def invalid_event(request: Request, exc: EventValidationError) -> JSONResponse:
        # The event we were about to publish does not fit its contract: nothing was written.
        return JSONResponse(status_code=422, content={"detail": str(exc), "path": exc.path})

    @app.post("/orders", status_code=201)
    async def place_order(order: OrderIn, request: Request) -> OrderOut:
        db: asyncpg.Pool = request.app.state.pool
        dispatcher: Dispatcher = request.app.state.dispatcher
        order_id, payment_id = new_id("crp"), new_id("pay")
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO shop_order (order_id, payment_id, person_id, amount_cents, currency)"
                " VALUES ($1, $2, $3, $4, $5)",
                order_id,
                payment_id,
                order.person_id,
                order.amount_cents,
                order.currency,
            )
            envelope = await dispatcher.publish(
                "payment.received",
                {
                    "payment_id": payment_id,
                    "person_id": order.person_id,
                    "credit_purchase_id": order_id,
                    "amount_cents": order.amount_cents,
                    "currency": order.currency,
                    "payment_method": order.payment_method,
                    "payment_processor_provider": order.provider,
                    "payment_processor_ref": order.provider_ref,
                    "received_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                },
                subject=order.person_id,
                actor=f"user:{order.person_id}",
                conn=conn,
            )
        return OrderOut(order_id=order_id, payment_id=payment_id, event_id=envelope.event_id)

    return app


#: For ``uvicorn shop.app:app``: its pool is made at start-up from ``DATABASE_URL``.
app = create_app()
