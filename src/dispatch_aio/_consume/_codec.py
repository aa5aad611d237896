"""The consumer's use of the envelope codec (``dispatch_aio._codec``): the Event (or
StoredEvent) a handler gets from a row, and dead-letter rows.

Rows are read defensively: ``occurred_at`` comes as whole microseconds since 1970 (NULL
when infinite), so a value Python cannot represent (``-infinity``, year 10000, a BC date)
makes that one event undecodable (a dead letter), never an exception in the read.
Dead-letter rows can always be stored: NUL and lone surrogates are escaped, the message
and traceback are capped.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic_core import from_json

from .._codec import (
    UndecodableEventError,
    dead_letter_envelope,
    occurred_at,
)
from .._codec import event_from_row as build_event
from .._envelope import Event
from .._errors import ContractError
from .._ids import new_id
from .._registry import Registry
from .._storage._consumer_store import DeadLetterRow
from .._typed import PayloadModel, with_model_payload
from ._items import Item

__all__ = [
    "AS_STORED",
    "DECODE_ERRORS",
    "MAX_MESSAGE",
    "MAX_TRACEBACK",
    "EventDecoder",
    "StoredEvent",
    "UndecodableEventError",
    "build_event",
    "dead_letter_row",
    "occurred_at",
    "occurred_at_text",
    "parse_payload",
    "storable",
]

MAX_MESSAGE = 4_000
MAX_TRACEBACK = 16_000

#: What :class:`EventDecoder` raises for a row that can never become an Event (a payload
#: that is not JSON, fails its schema or the handler's model, a value Python cannot
#: represent): retrying cannot fix it, the event is dead-lettered at once.
DECODE_ERRORS = (ContractError, ValueError, RecursionError, TypeError)


class _AsStored(BaseModel):
    """Never instantiated: see :data:`AS_STORED`."""


#: A subscription's ``payload_model`` that asks for a :class:`StoredEvent` instead of an
#: Event: for a handler that forwards events as they are (the fan-out). It travels where
#: a payload model does (subscription, fetcher, decoder), so no other part needs to know.
AS_STORED: PayloadModel = _AsStored


class StoredEvent:
    """An event as its row holds it, for a handler that forwards it as it is (the fan-out).

    Cheaper to build than an :class:`Event`: the payload is parsed JSON but not checked
    against its schema (it was when it was published, and the receiving side checks it
    again), no pydantic model is built, and ``occurred_at`` is already its RFC 3339 text
    (as ``format_timestamp`` writes it). The other envelope fields are read from ``row``.
    """

    __slots__ = ("attempt", "occurred_at", "payload", "row")

    def __init__(self, row: Any, payload: dict[str, Any], occurred_at: str, attempt: int) -> None:
        self.row = row
        self.payload = payload
        self.occurred_at = occurred_at
        self.attempt = attempt

    @property
    def event_id(self) -> str:
        """The event's id."""
        value: str = self.row["event_id"]
        return value

    @property
    def event_type(self) -> str:
        """The event's type."""
        value: str = self.row["event_type"]
        return value

    @property
    def traceparent(self) -> str | None:
        """The W3C traceparent the event was published under, if any."""
        value: str | None = self.row["traceparent"]
        return value

    def model_copy(self, *, update: Mapping[str, Any]) -> StoredEvent:
        """A copy with ``attempt`` changed (what the consumer renumbers, as on an Event)."""
        if set(update) - {"attempt"}:
            raise TypeError("only the attempt of a StoredEvent can change")
        return StoredEvent(self.row, self.payload, self.occurred_at, update["attempt"])


@lru_cache(maxsize=256)
def _second_text(second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a whole second since 1970 (UndecodableEventError if
    Python cannot represent it): events read together mostly share their seconds."""
    return occurred_at(second * 1_000_000).isoformat()[:19]


def occurred_at_text(micros: int | None) -> str:
    """``occurred_at`` from microseconds since 1970 as ``format_timestamp`` writes it.

    Raises UndecodableEventError as :func:`occurred_at` does. A fifth of the time of
    building the datetime and formatting it: only the fraction is written per event.
    """
    if micros is None:
        raise UndecodableEventError("occurred_at is infinite")
    second, fraction = divmod(micros, 1_000_000)
    return f"{_second_text(second)}.{fraction:06d}Z"


class EventDecoder:
    """Builds the :class:`Event` a handler gets from the row read; pure.

    Called right before the handler runs, not when the row is read: an Event held in the
    read-ahead buffer would only outlive the collector's young generation and cost every
    later collection (and its memory) until its turn. Raises one of
    :data:`DECODE_ERRORS` when the row cannot be decoded.

    The payload is checked against its schema unless the row says publish checked it
    against a schema with the same digest as ours (``checked_against``, ADR 0007): that
    check would pass again. A row without the column, or with another digest (written by
    hand, by another producer's contracts, under other rules), is checked here.
    """

    __slots__ = ("_digests", "_models", "_registry")

    def __init__(self, registry: Registry, payload_models: Mapping[str, PayloadModel]) -> None:
        self._registry = registry
        self._digests = dict(registry.payload_digests)  # a dict's get: once per event
        self._models = dict(payload_models)

    def __call__(self, row: Any, attempt: int = 1) -> Event | StoredEvent:
        """The Event of ``row``, as attempt ``attempt``; see :data:`DECODE_ERRORS`.

        A StoredEvent instead for a type whose handler asked for one (:data:`AS_STORED`).
        """
        payload = parse_payload(row["payload"])
        if not isinstance(payload, dict):
            raise ValueError("payload is not a JSON object")
        event_type = row["event_type"]
        model = self._models.get(event_type)
        if model is AS_STORED:
            return StoredEvent(row, payload, occurred_at_text(row["occurred_us"]), attempt)
        version = row["schema_version"]
        checked = row.get("checked_against")
        if checked is None or checked != self._digests.get((event_type, version)):
            self._registry.validate_payload(event_type, version, payload)
        event = build_event(row, payload, attempt)
        if model is not None:
            # Parsed here, so that a payload the handler's model refuses (a ValueError)
            # is dead-lettered at once, like one that fails its schema.
            event = with_model_payload(event, model)
        return event

    def item_event(self, item: Item) -> Event | StoredEvent | None:
        """The Event of ``item``'s row as its next attempt, or None once ``item`` holds
        the dead letter of a row that cannot be decoded (retrying cannot fix that)."""
        try:
            return self(item.row, item.attempts + 1)
        except DECODE_ERRORS as exc:
            item.dead_letter = dead_letter_row(item.row, exc, attempts=item.attempts)
            return None


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
