"""The consumer's use of the envelope codec (``dispatch_aio._codec``): dead-letter rows.

Rows are read defensively: ``occurred_at`` comes as whole microseconds since 1970 (NULL
when infinite), so a value Python cannot represent (``-infinity``, year 10000, a BC date)
makes that one event undecodable (a dead letter), never an exception in the read.
Dead-letter rows can always be stored: NUL and lone surrogates are escaped, the message
and traceback are capped.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

from pydantic_core import from_json

from .._codec import (
    UndecodableEventError,
    dead_letter_envelope,
    occurred_at,
)
from .._codec import event_from_row as build_event
from .._ids import new_id
from .._storage._consumer_store import DeadLetterRow

__all__ = [
    "MAX_MESSAGE",
    "MAX_TRACEBACK",
    "UndecodableEventError",
    "build_event",
    "dead_letter_row",
    "occurred_at",
    "parse_payload",
    "storable",
]

MAX_MESSAGE = 4_000
MAX_TRACEBACK = 16_000


def parse_payload(text: str) -> Any:
    """A payload's JSON text as Python values (what ``json.loads`` gives).

    pydantic's JSON parser (a dependency already) takes a third of ``json.loads``'s time,
    and this runs once per consumed event. Text it refuses (a lone surrogate escape,
    which jsonb never holds) goes to ``json.loads``, whose ValueError says what is wrong.
    Only keys go through the parser's string cache: values are mostly ids, each seen once,
    and caching them costs a third of the parse.
    """
    try:
        return from_json(text, cache_strings="keys")
    except ValueError:
        return json.loads(text)


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


def dead_letter_row(row: Any, exc: BaseException, *, attempts: int) -> DeadLetterRow:
    """The dead-letter row of the event read as ``row``, failed with ``exc``."""
    message = storable(str(exc), MAX_MESSAGE) or type(exc).__name__
    return DeadLetterRow(
        dead_letter_id=new_id("dlq"),
        event_id=row["event_id"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        tenant_id=row["tenant_id"],
        subject=row["subject"],
        envelope=dead_letter_envelope(row),
        error_type=type(exc).__name__,
        error_message=message,
        error_traceback=storable(
            "".join(traceback.format_exception(exc)), MAX_TRACEBACK, keep="tail"
        ),
        attempts=attempts,
    )
