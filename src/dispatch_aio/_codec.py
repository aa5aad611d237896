"""The envelope's field list, written once: publish parameters, row to Event, dead-letter
JSON. Pure: no I/O.

Every place that moves an envelope between Python and a table row goes through here, so
a new envelope field is added in one list. ``occurred_at`` and ``payload`` are the two
fields with an encoding of their own: published as a datetime and as JSON text; read
back as microseconds since 1970 (so that a value Python cannot represent fails one
event, not a whole read) and as JSON text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, TypeVar

from pydantic import BaseModel

from ._envelope import Envelope, Event, format_timestamp

__all__ = [
    "OPTIONAL_FIELDS",
    "PLAIN_FIELDS",
    "PUBLISH_COLUMNS",
    "UndecodableEventError",
    "construct_envelope",
    "dead_letter_envelope",
    "event_from_row",
    "occurred_at",
    "publish_parameters",
    "trusted_envelope",
]

#: Fields stored and read as they are, in the column order of the insert queries
#: (``occurred_at`` goes between ``actor`` and ``correlation_id``; ``payload`` last).
PLAIN_FIELDS = (
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
#: Fields that may be absent (NULL), left out of JSON when they are.
OPTIONAL_FIELDS = ("correlation_id", "causation_id", "traceparent")

_BEFORE_OCCURRED = PLAIN_FIELDS[:7]
_AFTER_OCCURRED = PLAIN_FIELDS[7:]
#: The event table's columns that :func:`publish_parameters` fills, in its order (what
#: publish_many's COPY names; the insert trigger sets xid, position and partition).
#: ``checked_against``: the digest of the schema the payload was checked against.
PUBLISH_COLUMNS = (
    *_BEFORE_OCCURRED,
    "occurred_at",
    *_AFTER_OCCURRED,
    "payload",
    "checked_against",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EVENT_FIELDS = frozenset(Event.model_fields)
_ENVELOPE_FIELDS = tuple(Envelope.model_fields)
_ENVELOPE_TYPES = {"schema_version": int, "occurred_at": datetime, "payload": dict}


def _fields_set_by_types() -> dict[tuple[type, ...], frozenset[str]]:
    """The exact value types of a trusted envelope's fields, for each optional field present.

    Keyed by the types in field order (NoneType for an absent optional field), so that
    one tuple comparison checks every type and picks the set of given fields.
    """
    found: dict[tuple[type, ...], frozenset[str]] = {}
    for mask in range(2 ** len(OPTIONAL_FIELDS)):
        given = {name for bit, name in enumerate(OPTIONAL_FIELDS) if mask >> bit & 1}
        types = tuple(
            type(None)
            if name in OPTIONAL_FIELDS and name not in given
            else _ENVELOPE_TYPES.get(name, str)
            for name in _ENVELOPE_FIELDS
        )
        found[types] = frozenset(n for n in _ENVELOPE_FIELDS if n not in OPTIONAL_FIELDS) | given
    return found


_FIELDS_SET_BY_TYPES = _fields_set_by_types()
_PUBLISHED_VALUES = itemgetter(*_BEFORE_OCCURRED, "occurred_at", *_AFTER_OCCURRED)
_ModelT = TypeVar("_ModelT", bound=BaseModel)
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


class UndecodableEventError(ValueError):
    """A stored event holds a value Python cannot represent (a dead letter, not a crash)."""


def publish_parameters(
    envelope: Envelope, encoded_payload: str, checked_against: int
) -> tuple[Any, ...]:
    """The insert queries' parameters for ``envelope`` (payload already encoded), whose
    payload was checked against the schema whose digest is ``checked_against``."""
    return (*_PUBLISHED_VALUES(envelope.__dict__), encoded_payload, checked_against)


def trusted_envelope(values: dict[str, Any]) -> Envelope | None:
    """An Envelope holding ``values``, without validation; None if a type is not exact.

    ``values`` has every field of Envelope in its order (None for an absent optional
    one) and becomes the envelope's own: the caller must not change it afterwards. For
    values already checked against the envelope schema: publish builds one per event,
    and pydantic's validation would only repeat the checks. A value whose type is a
    subclass (of str, say) gets None back: pydantic's validation converts it.
    """
    if tuple(values) != _ENVELOPE_FIELDS:
        return None
    types = tuple(map(type, values.values()))
    fields_set = _FIELDS_SET_BY_TYPES.get(types)
    if fields_set is None:
        return None
    return _construct(Envelope, values, set(fields_set))


def construct_envelope(values: dict[str, Any], fields_set: set[str]) -> Envelope:
    """An Envelope of ``values`` whose types the caller has made sure are exact.

    What :func:`trusted_envelope` does after its checks, for a caller that checked the
    types of every value itself (publish_many's batch loop) and knows the fields given.
    """
    return _construct(Envelope, values, fields_set)


def _construct(cls: type[_ModelT], values: dict[str, Any], fields_set: set[str]) -> _ModelT:
    """What ``model_construct`` does minus its per-field default handling."""
    model = cls.__new__(cls)
    # BaseModel's own slot descriptors, called directly: what object.__setattr__ finds
    # after a look-up along the class's MRO, at half the cost (once per event).
    _set_dict(model, values)
    _set_fields_set(model, fields_set)
    _set_extra(model, None)
    _set_private(model, None)
    return model


def occurred_at(micros: int | None) -> datetime:
    """``occurred_at`` from microseconds since 1970; UndecodableEventError when out of range."""
    if micros is None:
        raise UndecodableEventError("occurred_at is infinite")
    try:
        # Positional (days, seconds, microseconds): half the cost of the keyword form.
        return _EPOCH + timedelta(0, 0, micros)
    except OverflowError:
        raise UndecodableEventError(
            f"occurred_at ({micros} microseconds from 1970) is outside the years 1-9999"
        ) from None


def event_from_row(row: Any, payload: dict[str, Any], attempt: int = 1) -> Event:
    """An Event from a row (``occurred_us``, ``position``) and its parsed, valid payload.

    What ``model_construct`` does minus its per-field default handling (every field is
    given): this runs once per consumed event, so the fields are spelled out (a dict
    display costs half a comprehension over PLAIN_FIELDS; a test holds the two equal).
    """
    values = {
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "schema_version": row["schema_version"],
        "tenant_id": row["tenant_id"],
        "producer": row["producer"],
        "subject": row["subject"],
        "actor": row["actor"],
        "correlation_id": row["correlation_id"],
        "causation_id": row["causation_id"],
        "traceparent": row["traceparent"],
        "occurred_at": occurred_at(row["occurred_us"]),
        "payload": payload,
        "position": row["position"],
        "attempt": attempt,
    }
    return _construct(Event, values, set(_EVENT_FIELDS))


def dead_letter_envelope(row: Any) -> str:
    """The envelope of a stored row as JSON text, for its dead letter.

    The payload goes in as stored text: it may be too deep for Python to parse. An
    ``occurred_at`` Python cannot represent is described instead of failing.
    """
    envelope: dict[str, Any] = {}
    for name in PLAIN_FIELDS:
        value = row[name]
        if value is not None or name not in OPTIONAL_FIELDS:
            envelope[name] = value
    try:
        envelope["occurred_at"] = format_timestamp(occurred_at(row["occurred_us"]))
    except UndecodableEventError as exc:
        envelope["occurred_at"] = f"unrepresentable: {exc}"
    head = json.dumps(envelope)
    return head[:-1] + ', "payload": ' + str(row["payload"]) + "}"
