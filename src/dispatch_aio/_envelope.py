"""The event envelope: what publish writes and what a handler receives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic

from pydantic import BaseModel, ConfigDict

# typing_extensions (a dependency of pydantic) for PEP 696 defaults: a bare ``Event``
# keeps dict payloads, for mypy and for pydantic alike.
from typing_extensions import TypeVar

__all__ = ["Envelope", "Event", "PayloadT", "format_timestamp"]

#: The payload type of an :class:`Event`: a dict unless a model is given (``Event[Model]``).
PayloadT = TypeVar("PayloadT", default=dict[str, Any])


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``: ``2026-05-09T19:00:00.000000Z``.

    Years below 1000 keep four digits (``0999-...``): ``strftime('%Y')`` would not pad.
    """
    if value.tzinfo is UTC:
        # Already UTC (every consumed event): isoformat ends "+00:00", cut to "Z" in one
        # call, without the conversion and the copy without tzinfo.
        return value.isoformat(timespec="microseconds")[:-6] + "Z"
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
            # An Event[Model] carries a model: back to JSON data, as it was published.
            "payload": self.payload.model_dump(mode="json", by_alias=True)
            if isinstance(self.payload, BaseModel)
            else self.payload,
        }
        for key in ("correlation_id", "causation_id", "traceparent"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


class Event(Envelope, Generic[PayloadT]):
    """A consumed event: the envelope plus where it sits in the log and which attempt this is.

    ``position`` orders events of one subject by commit; ``attempt`` starts at 1.
    ``Event`` alone carries the payload as a dict; ``Event[OrderPlaced]`` (a pydantic
    model) carries it parsed into that model: annotate a handler's first parameter so and
    the consumer parses each payload before the call (see ``docs/contracts.md``).
    """

    # The one place the payload's type narrows: Envelope's dict becomes the parameter.
    payload: PayloadT  # type: ignore[assignment]
    position: int
    attempt: int = 1
