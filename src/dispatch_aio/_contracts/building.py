"""Building envelopes for publish: checks, encoding, the insert row. Pure: no I/O.

publish_many spends its Python time here, once per event, so the per-event path does
only what differs between events: the payload's schema, the fields a caller passes
(each value once while it repeats) and the JSON encoding. What publish makes itself
(event id, tenant, producer, version, a generated occurred_at) is checked against the
envelope schema once per event type, version and set of optional fields. A rejected
event raises the same typed error, with the same path, as a whole-envelope validation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import fastjsonschema
from pydantic import BaseModel, ValidationError

from .._codec import OPTIONAL_FIELDS, publish_parameters, trusted_envelope
from .._envelope import Envelope, format_timestamp
from .._errors import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidEnvelopeError,
    InvalidPayloadError,
    PayloadTooLargeError,
)
from .._ids import new_id
from .._registry import Registry

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_DEPTH",
    "OCCURRED_AT_MAX",
    "OCCURRED_AT_MIN",
    "EnvelopeBuilder",
    "has_nul",
]

#: Default limit of an encoded payload: large blobs do not belong in an event log.
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
#: The deepest nesting of objects and arrays a payload may have. Far beyond any real
#: event; it keeps validation, encoding and jsonb below Python's recursion limit.
MAX_PAYLOAD_DEPTH = 64
#: The accepted range of occurred_at, in UTC. The driver stores datetime.min and
#: datetime.max as -infinity and infinity, which read back as naive datetimes: refused.
OCCURRED_AT_MIN = datetime.min.replace(tzinfo=UTC) + timedelta(microseconds=1)
OCCURRED_AT_MAX = datetime.max.replace(tzinfo=UTC) - timedelta(microseconds=1)


def _payload_encoder() -> Callable[[Any], str]:
    """JSON text of a payload: compact, non-ASCII kept as is, NaN and infinity refused.

    json's C encoder is made once here, not on every call as ``JSONEncoder.encode``
    does (a third of the time of a small payload). It runs without the check for
    circular references: a payload has passed the depth limit, so it holds no cycle;
    a Mapping that hides a cycle from that walk ends in RecursionError, which publish
    reports as an invalid payload.
    """
    standard = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without json's C accelerator
        return standard.encode
    chunks = make(
        None, standard.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


_dumps = _payload_encoder()

_Validator = Callable[[Any], Any]

#: Envelope fields whose values come from the caller of publish (occurred_at aside).
_CALLER_FIELDS = ("subject", "actor", "correlation_id", "causation_id", "traceparent")
#: Values that end the nesting: the depth walk skips them without a Mapping check.
_LEAF_TYPES = frozenset({str, int, float, bool, type(None)})


class _EnvelopeCheck:
    """Validates built envelopes against the registry's envelope schema, cheaply.

    What publish makes itself has the same shape on every event, so the whole envelope
    is validated once per (event type, version, optional fields present). The fields a
    caller gives are validated one by one, each value only while it differs from the
    last one accepted for its field (a batch usually repeats its actor and trace
    context); an occurred_at given by the caller on every event. Where the schema
    relates fields to each other, every envelope is validated whole instead. Any
    failure is reported by the registry's full validation: its typed error and path.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.checked: set[tuple[str, int, bool, bool, bool]] = set()
        # Only exact str values are remembered: a subclass may compare equal and differ.
        self._accepted: dict[str, str] = {}
        # Compiled by the registry from the schema it read at load: never from disk here.
        validators = {
            name: registry.envelope_field_validator(name)
            for name in (*_CALLER_FIELDS, "occurred_at")
        }
        self.fields: dict[str, _Validator] | None = {
            name: validator for name, validator in validators.items() if validator is not None
        }
        if len(self.fields) < len(validators):
            self.fields = None
        self._identity = registry.envelope_fields_validator(("producer", "tenant_id"))

    def check_identity(self, producer: str, tenant_id: str) -> None:
        """Refuse, at construction, a producer or tenant that no envelope could carry."""
        try:
            self._identity({"producer": producer, "tenant_id": tenant_id})
        except fastjsonschema.JsonSchemaValueException as exc:
            field = "producer" if "producer" in (exc.name or "") else "tenant_id"
            value = producer if field == "producer" else tenant_id
            raise ConfigurationError(
                f"{field} {value!r} does not fit the envelope contract: {exc.message}"
            ) from None

    def __call__(self, data: dict[str, Any], *, occurred_at_given: bool) -> None:
        key = (
            data["event_type"],
            data["schema_version"],
            data["correlation_id"] is None,
            data["causation_id"] is None,
            data["traceparent"] is None,
        )
        fields = self.fields
        if fields is None or key not in self.checked:
            self._full(data)
            self.checked.add(key)
            for name in _CALLER_FIELDS:
                if type(data[name]) is str:
                    self._accepted[name] = data[name]
            return
        accepted = self._accepted
        try:
            for name in _CALLER_FIELDS:
                value = data[name]
                if type(value) is str:
                    if accepted.get(name) != value:
                        fields[name](value)
                        accepted[name] = value
                elif value is not None or name not in OPTIONAL_FIELDS:
                    fields[name](value)
            if occurred_at_given:
                fields["occurred_at"](format_timestamp(data["occurred_at"]))
        except fastjsonschema.JsonSchemaValueException as exc:
            self._full(data)  # raises the typed error with its path
            raise InvalidEnvelopeError(key[0], key[1], "$", exc.message) from None

    def _full(self, data: dict[str, Any]) -> None:
        envelope = {k: v for k, v in data.items() if v is not None or k not in OPTIONAL_FIELDS}
        envelope["occurred_at"] = format_timestamp(data["occurred_at"])
        self._registry.validate_envelope(envelope)


class EnvelopeBuilder:
    """Builds, checks and encodes envelopes for one producer and tenant. No I/O.

    Construction refuses a producer or tenant outside the envelope contract
    (ConfigurationError). Safe to share between tasks: a build holds no state across
    an await.
    """

    def __init__(
        self, registry: Registry, producer: str, tenant_id: str, max_payload_bytes: int
    ) -> None:
        self.registry = registry
        self.producer = producer
        self.tenant_id = tenant_id
        self.max_payload_bytes = max_payload_bytes
        self.envelope_check = _EnvelopeCheck(registry)
        self.envelope_check.check_identity(producer, tenant_id)
        # Current versions publish_many has looked up: the registry never changes.
        self.current_versions: dict[str, int] = {}

    def build(
        self,
        event_type: Any,
        payload: Any,
        subject: Any,
        actor: Any,
        schema_version: Any = None,
        correlation_id: Any = None,
        causation_id: Any = None,
        occurred_at: Any = None,
        traceparent: str | None = None,
    ) -> tuple[Envelope, tuple[Any, ...]]:
        """The envelope and its insert row (payload encoded); raises a DispatchError."""
        registry = self.registry
        if not isinstance(event_type, str):
            raise InvalidArgumentError(
                f"event_type must be a str such as 'credit.locked', got {type(event_type).__name__}"
            )
        if schema_version is not None and (
            isinstance(schema_version, bool) or not isinstance(schema_version, int)
        ):
            raise InvalidArgumentError(
                f"schema_version must be an int or None, got {type(schema_version).__name__}"
            )
        version = registry.current_version(event_type) if schema_version is None else schema_version
        occurred_at_given = occurred_at is not None
        if occurred_at is None:
            occurred_at = datetime.now(UTC)
        else:
            occurred_at = _as_utc(event_type, version, occurred_at)
        if type(payload) is dict:  # the usual case, without the slower ABC checks below
            payload = payload.copy()
        elif isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json", by_alias=True)
        elif isinstance(payload, Mapping):
            payload = dict(payload)
        else:
            raise InvalidPayloadError(event_type, version, "$.payload", "must be an object")
        check_shape(event_type, version, payload)
        registry.validate_payload(event_type, version, payload)
        values: dict[str, Any] = {
            "event_id": new_id("evt"),
            "event_type": event_type,
            "schema_version": version,
            "occurred_at": occurred_at,
            "tenant_id": self.tenant_id,
            "producer": self.producer,
            "subject": subject,
            "actor": actor,
            "payload": payload,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "traceparent": traceparent,
        }
        self.envelope_check(values, occurred_at_given=occurred_at_given)
        encoded = self.encode_payload(event_type, version, payload)
        envelope = trusted_envelope(values)
        if envelope is None:  # a subclass of str, int, dict or datetime: pydantic converts it
            given = {k: v for k, v in values.items() if v is not None or k not in OPTIONAL_FIELDS}
            try:
                envelope = Envelope.model_validate(given)
            except ValidationError as exc:
                raise InvalidEnvelopeError(event_type, version, "$", str(exc)) from None
        digest = registry.payload_digest(event_type, version)
        return envelope, publish_parameters(envelope, encoded, digest)

    def encode_payload(self, event_type: str, version: int, payload: dict[str, Any]) -> str:
        try:
            encoded = _dumps(payload)
            # ASCII text is as many bytes as characters; other text is encoded, which
            # also refuses a lone surrogate (UnicodeEncodeError).
            size = len(encoded) if encoded.isascii() else len(encoded.encode())
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidPayloadError(event_type, version, "$.payload", str(exc)) from exc
        if "\\u0000" in encoded and has_nul(payload):
            raise InvalidPayloadError(
                event_type, version, "$.payload", "PostgreSQL jsonb cannot store U+0000 in text"
            )
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(event_type, size, self.max_payload_bytes)
        return encoded


def has_nul(value: Any) -> bool:
    """True when a string or key anywhere in ``value`` holds U+0000 (jsonb refuses it)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(item) for item in value)
    return False


def check_shape(event_type: str, version: int, payload: dict[str, Any]) -> None:
    """Refuse top-level keys that are not strings, and nesting beyond MAX_PAYLOAD_DEPTH."""
    flat = True
    for key, value in payload.items():
        if type(key) is not str and not isinstance(key, str):
            reason = f"keys must be strings, got {type(key).__name__} {key!r:.40}"
            raise InvalidPayloadError(event_type, version, "$.payload", reason)
        if flat and type(value) not in _LEAF_TYPES:
            flat = False
    if not flat and (depth := _depth_beyond(payload, MAX_PAYLOAD_DEPTH)) is not None:
        raise InvalidPayloadError(
            event_type,
            version,
            "$.payload",
            f"nested deeper than {MAX_PAYLOAD_DEPTH} levels (at {depth}): flatten it",
        )


def _as_utc(event_type: str, version: int, value: Any) -> datetime:
    """A caller's occurred_at in UTC; InvalidEnvelopeError unless it is an aware datetime
    between OCCURRED_AT_MIN and OCCURRED_AT_MAX."""
    if not isinstance(value, datetime):
        reason = f"must be a timezone-aware datetime, not {type(value).__name__}"
        raise InvalidEnvelopeError(event_type, version, "$.occurred_at", reason)
    try:
        # A tzinfo is the caller's code: its utcoffset may be out of range, or raise.
        offset = value.utcoffset()
        utc = value.astimezone(UTC) if offset is not None else None
    except OverflowError:
        reason = "out of range once converted to UTC"
    except Exception as exc:
        reason = f"its tzinfo gives no usable UTC offset ({type(exc).__name__}: {exc})"
    else:
        if utc is None:
            reason = "naive datetime: give a timezone-aware one"
        elif not OCCURRED_AT_MIN <= utc <= OCCURRED_AT_MAX:
            reason = (
                f"outside the accepted range {OCCURRED_AT_MIN.isoformat()} to "
                f"{OCCURRED_AT_MAX.isoformat()}"
            )
        else:
            return utc
    raise InvalidEnvelopeError(event_type, version, "$.occurred_at", reason)


def _depth_beyond(value: Any, limit: int) -> int | None:
    """The first nesting depth above ``limit`` found in ``value``, or None; no recursion.

    A scalar counts as one level below its container. Scalars of the JSON types are
    told apart by exact type, before the slower Mapping check: most payloads are flat.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return depth
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        for child in children:
            if type(child) in _LEAF_TYPES:
                if depth >= limit:
                    return depth + 1
            else:
                stack.append((child, depth + 1))
    return None
