import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import uuid_utils
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from dispatch_aio import Consumer, Dispatcher, Event, EventValidationError, check_schema
from dispatch_aio.fastapi import Principal, dlq_router


class CreditLocked(BaseModel):  # a typed view of the registered JSON Schema
    credit_reservation_id: str
    lesson_id: str
    person_id: str
    locked_credits: int
    locked_at: datetime


class LockIn(BaseModel):
    person_id: str
    credits: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with asyncpg.create_pool(os.environ["DATABASE_URL"]) as pool:
        await check_schema(pool)  # not migrated: fail at start-up, not on the first request
        app.state.pool = pool
        app.state.dispatcher = Dispatcher(pool, producer="revenue", tenant_id="tnt_sguild")
        yield


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


async def authenticate(authorization: Annotated[str, Header()] = "") -> Principal | None:
    token = os.environ.get("OPERATOR_TOKEN")  # stands for your own authentication
    if not token or not secrets.compare_digest(authorization, f"Bearer {token}"):
        return None  # -> 401
    return Principal(subject="operator", tenant_id="tnt_sguild", can_write=True)


app = FastAPI(lifespan=lifespan)
app.include_router(dlq_router(lambda: app.state.pool, authenticate=authenticate))


@app.exception_handler(EventValidationError)
async def invalid_event(request: Request, exc: EventValidationError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)  # nothing was written


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.post("/lessons/{lesson_id}/lock", status_code=201)
async def lock(
    lesson_id: str, body: LockIn, dispatcher: Annotated[Dispatcher, Depends(get_dispatcher)]
) -> dict[str, str]:
    locked = CreditLocked(
        credit_reservation_id=f"crr_{uuid_utils.uuid7()}",
        lesson_id=lesson_id,
        person_id=body.person_id,
        locked_credits=body.credits,
        locked_at=datetime.now(UTC),
    )
    async with dispatcher.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO reservation (id, lesson_id, credits) VALUES ($1, $2, $3)",
            locked.credit_reservation_id,
            lesson_id,
            body.credits,
        )  # the event below commits if and only if this row does
        envelope = await dispatcher.publish(
            "credit.locked", locked, subject=body.person_id, actor="system:revenue", conn=conn
        )
    return {"event_id": envelope.event_id}


def worker(pool: asyncpg.Pool) -> Consumer:  # dispatch-aio worker app:worker
    consumer = Consumer(pool, name="coaching", concurrency=8)

    @consumer.on("credit.locked")
    async def on_locked(event: Event[CreditLocked], conn: asyncpg.Connection) -> None:
        await conn.execute(  # commits with the event's "handled" marker: exactly once
            "INSERT INTO lesson_hold (lesson_id, credits) VALUES ($1, $2) ON CONFLICT "
            "(lesson_id) DO UPDATE SET credits = lesson_hold.credits + EXCLUDED.credits",
            event.payload.lesson_id,
            event.payload.locked_credits,
        )

    return consumer


TABLES = """
CREATE TABLE IF NOT EXISTS reservation (id text PRIMARY KEY, lesson_id text, credits int);
CREATE TABLE IF NOT EXISTS lesson_hold (lesson_id text PRIMARY KEY, credits int NOT NULL);
"""


async def create_tables() -> None:  # python app.py: the app's own tables, once per deploy
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        await conn.execute(TABLES)
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(create_tables())
