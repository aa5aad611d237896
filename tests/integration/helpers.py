"""Shared helpers of the tests: ids, payloads, raw inserts (dead letters), waiting."""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import uuid_utils

from dispatch_aio import Registry

_REGISTRY = Registry.load()


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid_utils.uuid7()}"


def locked_payload(**overrides: Any) -> dict[str, Any]:
    payload = {
        "credit_reservation_id": uid("crr"),
        "lesson_id": uid("les"),
        "person_id": uid("per"),
        "locked_credits": 2,
        "locked_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    payload.update(overrides)
    return payload


def example(event_type: str) -> dict[str, Any]:
    return copy.deepcopy(_REGISTRY.example_payload(event_type))


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within: float, what: str, every: float = 0.01
) -> None:
    """Poll ``check`` (sync or async) until true; fail the test after ``within`` seconds.

    For conditions that live in another process or in the database, where nothing can be
    awaited directly.
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


async def seed_dead_letter(
    db: asyncpg.Pool | asyncpg.Connection,
    *,
    consumer: str = "coaching",
    tenant_id: str | None = "tnt_a",
    event_type: str = "credit.locked",
    payload: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    resolved: bool = False,
    replay_status: str | None = None,
    replay_error: str | None = None,
    dead_letter_id: str | None = None,
    schema: str = "public",
) -> str:
    """Insert one dead letter the way a consumer would; return its id.

    The one helper for every test that needs dead letters without running a consumer.
    """
    dead_letter_id = dead_letter_id or uid("dlq")
    event_id = uid("evt")
    envelope = {
        "event_id": event_id,
        "event_type": event_type,
        "schema_version": 1,
        "tenant_id": tenant_id,
        "payload": {"n": 1} if payload is None else payload,
    }
    await db.execute(
        f"""INSERT INTO "{schema}".dispatcher_dead_letter (
               dead_letter_id, consumer, event_id, event_type, schema_version, tenant_id,
               subject, envelope, error_type, error_message, error_traceback, attempts,
               created_at, resolved_at, resolved_by, replay_status, replay_error)
           VALUES ($1, $2, $3, $4, 1, $5, 'per_1', $6::jsonb, 'ValueError', 'boom',
                   'Traceback (most recent call last): ...', 4, coalesce($7, now()),
                   CASE WHEN $8 THEN now() END, CASE WHEN $8 THEN 'ops' END, $9, $10)""",
        dead_letter_id,
        consumer,
        event_id,
        event_type,
        tenant_id,
        json.dumps(envelope),
        created_at,
        resolved,
        replay_status,
        replay_error,
    )
    return dead_letter_id
