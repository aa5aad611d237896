"""The event envelope: what publish writes and what a handler receives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["Envelope", "Event", "format_timestamp"]


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``: ``2026-05-09T19:00:00.000000Z``.

    Years below 1000 keep four digits (``0999-...``): ``strftime('%Y')`` would not pad.
    """
    utc = value.astimezone(UTC)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class Envelope(BaseModel):
    """An event as the envelope contract (``envelope-v1.json``) defines it. Immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    tenant_id: str
    producer: str
    subject: str
    actor: str
    payload: dict[str, Any]
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The envelope as JSON-ready data, optional fields omitted when unset."""
        data: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "occurred_at": format_timestamp(self.occurred_at),
            "tenant_id": self.tenant_id,
            "producer": self.producer,
            "subject": self.subject,
            "actor": self.actor,
            "payload": self.payload,
        }
        for key in ("correlation_id", "causation_id", "traceparent"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


class Event(Envelope):
    """A consumed event: the envelope plus where it sits in the log and which attempt this is.

    ``position`` orders events of one subject by commit; ``attempt`` starts at 1.
    """

    position: int
    attempt: int = 1
