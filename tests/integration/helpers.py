"""Shared helpers of the integration tests: ids, payloads and raw inserts."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

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
