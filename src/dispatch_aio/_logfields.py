"""Log fields about one event, written both into the message and into ``extra``.

An operator reading plain text sees ``[consumer=coaching event_type=credit.locked
event_id=evt_... attempt=2 dead_letter_id=dlq_...]`` at the end of the line, whatever
formatter the application uses; a JSON formatter picks the same names up from the
record. Pure.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EVENT_FIELDS", "event_fields", "tagged"]

#: The fields a record about one event may carry, in the order they are shown.
EVENT_FIELDS = ("consumer", "event_type", "event_id", "attempt", "dead_letter_id")


def event_fields(
    consumer: str,
    event_type: str,
    event_id: str,
    attempt: int,
    dead_letter_id: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a record about one event (no ``dead_letter_id`` key when None)."""
    fields: dict[str, Any] = {
        "consumer": consumer,
        "event_type": event_type,
        "event_id": event_id,
        "attempt": attempt,
    }
    if dead_letter_id is not None:
        fields["dead_letter_id"] = dead_letter_id
    return fields


def tagged(fields: dict[str, Any]) -> str:
    """`` [name=value ...]`` of the event fields present, for the end of a message."""
    shown = " ".join(f"{name}={fields[name]}" for name in EVENT_FIELDS if name in fields)
    return f" [{shown}]" if shown else ""
