"""The consumer's side of the envelope codec: a stored row to an Event, an event to its
dead-letter row.

Rows are read defensively: ``occurred_at`` comes as whole microseconds since 1970 (NULL
when infinite), so a value Python cannot represent (``-infinity``, year 10000, a BC date)
makes that one event undecodable (a dead letter), never an exception in the read.
Dead-letter rows can always be stored: NUL and lone surrogates are escaped, the message
and traceback are capped.
"""

from __future__ import annotations

import json
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

from .._envelope import Event, format_timestamp
from .._ids import new_id
from .._storage._consumer_store import DeadLetterRow

__all__ = [
    "MAX_MESSAGE",
    "MAX_TRACEBACK",
    "UndecodableEventError",
    "build_event",
    "dead_letter_row",
    "occurred_at",
    "storable",
]

MAX_MESSAGE = 4_000
MAX_TRACEBACK = 16_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EVENT_FIELDS = frozenset(Event.model_fields)

#: Envelope fields copied as they are from a row (payload and occurred_at aside).
_PLAIN_FIELDS = (
    "event_id",
    "event_type",
    "schema_version",
    "tenant_id",
    "producer",
    "subject",
    "actor",
    "correlation_id",
    "causation_id",
    "traceparent",
)


class UndecodableEventError(ValueError):
    """A stored event holds a value Python cannot represent (a dead letter, not a crash)."""


def occurred_at(micros: int | None) -> datetime:
    """``occurred_at`` from microseconds since 1970; UndecodableEventError when out of range."""
    if micros is None:
        raise UndecodableEventError("occurred_at is infinite")
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise UndecodableEventError(
            f"occurred_at ({micros} microseconds from 1970) is outside the years 1-9999"
        ) from None


def build_event(row: Any, payload: dict[str, Any]) -> Event:
    """An Event from a row and its parsed payload, already validated.

    What ``model_construct`` does minus its per-field default handling (every field is
    given): this runs once per consumed event.
    """
    values = {name: row[name] for name in _PLAIN_FIELDS}
    values["occurred_at"] = occurred_at(row["occurred_us"])
    values["payload"] = payload
    values["position"] = row["position"]
    values["attempt"] = 1
    event = Event.__new__(Event)
    object.__setattr__(event, "__dict__", values)
    object.__setattr__(event, "__pydantic_fields_set__", set(_EVENT_FIELDS))
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event


def storable(text: str, limit: int, *, keep: str = "head") -> str:
    """``text`` as PostgreSQL can store it (no NUL, no lone surrogate), at most ``limit``."""
    text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[:limit] if keep == "head" else text[-limit:]
    return text


def _occurred_text(row: Any) -> str:
    try:
        return format_timestamp(occurred_at(row["occurred_us"]))
    except UndecodableEventError as exc:
        return f"unrepresentable: {exc}"


def dead_letter_row(row: Any, exc: BaseException, *, attempts: int) -> DeadLetterRow:
    """The dead-letter row of the event read as ``row``, failed with ``exc``."""
    envelope: dict[str, Any] = {name: row[name] for name in _PLAIN_FIELDS}
    envelope["occurred_at"] = _occurred_text(row)
    # The payload goes in as stored text: it may be too deep for Python to parse.
    head = json.dumps({k: v for k, v in envelope.items() if v is not None})
    encoded = head[:-1] + ', "payload": ' + row["payload"] + "}"
    message = storable(str(exc), MAX_MESSAGE) or type(exc).__name__
    return DeadLetterRow(
        dead_letter_id=new_id("dlq"),
        event_id=row["event_id"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        tenant_id=row["tenant_id"],
        subject=row["subject"],
        envelope=encoded,
        error_type=type(exc).__name__,
        error_message=message,
        error_traceback=storable(
            "".join(traceback.format_exception(exc)), MAX_TRACEBACK, keep="tail"
        ),
        attempts=attempts,
    )
