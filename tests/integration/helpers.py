"""Shared helpers of the integration tests: ids, payloads and raw inserts."""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

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
