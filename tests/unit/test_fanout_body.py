"""The fan-out's POST body: the envelope's JSON document, whatever the event carries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

from dispatch_aio import Event
from dispatch_aio._delivery.fanout import envelope_json

_OPTIONAL = {"correlation_id": "cor_1", "causation_id": "evt_0", "traceparent": "00-ab-cd-01"}


def event(occurred_at: datetime, payload: Any = None, **optional: Any) -> Event[Any]:
    return Event[Any].model_construct(
        event_id="evt_1",
        event_type="credit.locked",
        schema_version=1,
        occurred_at=occurred_at,
        tenant_id="tnt_1",
        producer="revenue",
        subject="per_1",
        actor="system:revenue",
        payload={"n": 1, "s": 'é\\u2028"'} if payload is None else payload,
        correlation_id=optional.get("correlation_id"),
        causation_id=optional.get("causation_id"),
        traceparent=optional.get("traceparent"),
        position=1,
        attempt=1,
    )


def reference(value: Event[Any]) -> bytes:
    return json.dumps(
        value.to_json_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode()


class Locked(BaseModel):
    credits: int


@pytest.mark.parametrize(
    "occurred_at",
    [
        datetime(2026, 5, 9, 19, 0, tzinfo=UTC),  # no microseconds: still six digits
        datetime(2026, 5, 9, 19, 0, 0, 123456, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a three-digit year keeps four
        datetime(2026, 5, 9, 21, 0, tzinfo=timezone(timedelta(hours=2))),  # converted
        datetime(2026, 5, 9, 19, 0, tzinfo=timezone.utc),  # noqa: UP017 (the same object)
    ],
)
@pytest.mark.parametrize("optional", [{}, _OPTIONAL], ids=["bare", "all-optional"])
def test_the_body_is_the_envelopes_json_document(
    occurred_at: datetime, optional: dict[str, str]
) -> None:
    value = event(occurred_at, **optional)
    assert envelope_json(value) == reference(value)


def test_a_model_payload_is_sent_as_its_json_data() -> None:
    value = event(datetime(2026, 5, 9, tzinfo=UTC), Locked(credits=3))
    assert envelope_json(value) == reference(value)
    assert json.loads(envelope_json(value))["payload"] == {"credits": 3}
