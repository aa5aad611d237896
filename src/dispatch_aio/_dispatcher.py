"""Publishing: build, validate and insert envelopes inside the caller's transaction."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import asyncpg
import fastjsonschema
from pydantic import BaseModel

from ._codec import PUBLISH_COLUMNS, publish_parameters
from ._db import translate_errors
from ._envelope import Envelope, format_timestamp
from ._errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidArgumentError,
    InvalidEnvelopeError,
    InvalidPayloadError,
    InvalidSettingError,
    NotInTransactionError,
    PayloadTooLargeError,
    PoolExhaustedError,
    UsageError,
)
from ._identifiers import validate_schema_name
from ._ids import new_id
from ._registry import Registry
from ._sql import queries
from ._telemetry import Telemetry

__all__ = [
    "DEFAULT_ACQUIRE_TIMEOUT",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_DEPTH",
    "OCCURRED_AT_MAX",
    "OCCURRED_AT_MIN",
    "Dispatcher",
    "EventSpec",
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
#: Seconds publish waits for a pool connection before it raises PoolExhaustedError.
DEFAULT_ACQUIRE_TIMEOUT = 10.0

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

#: Envelope fields whose values come from the caller of publish (occurred_at aside).
_CALLER_FIELDS = ("subject", "actor", "correlation_id", "causation_id", "traceparent")
_SPEC_KEYS = frozenset(
    {
        "event_type",
        "payload",
        "subject",
        "actor",
        "schema_version",
        "correlation_id",
        "causation_id",
        "occurred_at",
    }
)


class _EventSpecRequired(TypedDict):
    event_type: str
    payload: Mapping[str, Any] | BaseModel
    subject: str
    actor: str


class EventSpec(_EventSpecRequired, total=False):
    """One event for :meth:`Dispatcher.publish_many`: publish's arguments as a dict."""

    schema_version: int
    correlation_id: str
    causation_id: str
    occurred_at: datetime


class _EnvelopeCheck:
    """Validates built envelopes against the registry's envelope schema, cheaply.

    What publish makes itself (event_id, tenant_id, producer, schema_version, a generated
    occurred_at) has the same shape on every event, so the whole envelope is validated
    once per (event type, version). The fields a caller passes are validated on every
    event, by a validator compiled from the same schema with ``required`` narrowed to
    them; an occurred_at given by the caller sends the envelope through the whole check.
    Any failure is reported by the registry's full validation: its typed error and path.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._checked: set[tuple[str, int]] = set()
        # Compiled by the registry from the schema it read at load: never from disk here.
        required = registry.envelope_required_fields()
        self._caller_fields = registry.envelope_fields_validator(
            tuple(name for name in required if name in _CALLER_FIELDS)
        )
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
        key = (data["event_type"], data["schema_version"])
        if occurred_at_given or key not in self._checked:
            self._full(data)
            self._checked.add(key)
            return
        try:
            self._caller_fields({name: data[name] for name in _CALLER_FIELDS if name in data})
        except fastjsonschema.JsonSchemaValueException as exc:
            self._full(data)  # raises the typed error with its path
            raise InvalidEnvelopeError(key[0], key[1], "$", exc.message) from None

    def _full(self, data: dict[str, Any]) -> None:
        self._registry.validate_envelope(
            {**data, "occurred_at": format_timestamp(data["occurred_at"])}
        )


def _has_nul(value: Any) -> bool:
    """True when a string or key anywhere in ``value`` holds U+0000 (jsonb refuses it)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False


class Dispatcher:
    """Publishes events into ``<schema>.dispatcher_event``.

    ``producer`` and ``tenant_id`` fall back to ``DISPATCHER_PRODUCER`` and
    ``DISPATCHER_TENANT_ID``, read here, at construction. The registry defaults to the
    bundled contracts. Nothing is written for an event that fails validation.
    A publish without ``conn`` waits at most ``acquire_timeout`` seconds for a pool
    connection, then raises PoolExhaustedError.
    """

    def __init__(
        self,
        pool: asyncpg.Pool | None,
        *,
        producer: str | None = None,
        tenant_id: str | None = None,
        registry: Registry | None = None,
        schema: str = "public",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        telemetry: Telemetry | None = None,
        acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
    ) -> None:
        producer = producer or os.environ.get("DISPATCHER_PRODUCER")
        tenant_id = tenant_id or os.environ.get("DISPATCHER_TENANT_ID")
        if not producer:
            raise ConfigurationError(
                "Dispatcher needs a producer: pass producer=... or set DISPATCHER_PRODUCER"
            )
        if not tenant_id:
            raise ConfigurationError(
                "Dispatcher needs a tenant: pass tenant_id=... or set DISPATCHER_TENANT_ID"
            )
        if (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or max_payload_bytes <= 0
        ):
            raise InvalidSettingError(
                f"max_payload_bytes must be a positive int, got {max_payload_bytes!r}"
            )
        if registry is not None and not isinstance(registry, Registry):
            raise InvalidSettingError(
                f"registry must be a Registry (Registry.load(...)), got {type(registry).__name__}"
            )
        if telemetry is not None and not isinstance(telemetry, Telemetry):
            raise InvalidSettingError(
                f"telemetry must be a Telemetry, got {type(telemetry).__name__}"
            )
        if (
            isinstance(acquire_timeout, bool)
            or not isinstance(acquire_timeout, int | float)
            or not math.isfinite(acquire_timeout)
            or acquire_timeout <= 0
        ):
            raise InvalidSettingError(
                f"acquire_timeout must be a positive number of seconds, got {acquire_timeout!r}"
            )
        self.acquire_timeout = float(acquire_timeout)
        self.pool = pool
        self.producer = producer
        self.tenant_id = tenant_id
        self.schema = validate_schema_name(schema)
        self.registry = registry if registry is not None else Registry.load()
        self._check_envelope = _EnvelopeCheck(self.registry)
        self._check_envelope.check_identity(producer, tenant_id)
        self.max_payload_bytes = max_payload_bytes
        self.telemetry = telemetry if telemetry is not None else Telemetry.default()
        self._queries = queries(self.schema)

    # -- building ------------------------------------------------------------------

    def build(
        self,
        event_type: str,
        payload: Mapping[str, Any] | BaseModel,
        *,
        subject: str,
        actor: str,
        schema_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        occurred_at: datetime | None = None,
        traceparent: str | None = None,
    ) -> tuple[Envelope, str]:
        """Build and validate one envelope; return it with its encoded payload. No I/O.

        A pydantic model as ``payload`` is dumped in JSON mode by alias, then validated
        against the registered JSON Schema like a dict.
        """
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
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json", by_alias=True)
        elif not isinstance(payload, Mapping):
            raise InvalidPayloadError(event_type, version, "$.payload", "must be an object")
        payload = dict(payload)
        if (depth := _depth_beyond(payload, MAX_PAYLOAD_DEPTH)) is not None:
            raise InvalidPayloadError(
                event_type,
                version,
                "$.payload",
                f"nested deeper than {MAX_PAYLOAD_DEPTH} levels (at {depth}): flatten it",
            )
        registry.validate_payload(event_type, version, payload)
        data: dict[str, Any] = {
            "event_id": new_id("evt"),
            "event_type": event_type,
            "schema_version": version,
            "occurred_at": occurred_at,
            "tenant_id": self.tenant_id,
            "producer": self.producer,
            "subject": subject,
            "actor": actor,
            "payload": payload,
        }
        if correlation_id is not None:
            data["correlation_id"] = correlation_id
        if causation_id is not None:
            data["causation_id"] = causation_id
        if traceparent is not None:
            data["traceparent"] = traceparent
        self._check_envelope(data, occurred_at_given=occurred_at_given)
        try:
            encoded = _dumps(payload)
            size = len(encoded.encode())
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError: a lone surrogate
            raise InvalidPayloadError(event_type, version, "$.payload", str(exc)) from exc
        if "\\u0000" in encoded and _has_nul(payload):
            raise InvalidPayloadError(
                event_type, version, "$.payload", "PostgreSQL jsonb cannot store U+0000 in text"
            )
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(event_type, size, self.max_payload_bytes)
        return Envelope.model_validate(data), encoded

    @staticmethod
    def _row(envelope: Envelope, encoded: str) -> tuple[Any, ...]:
        return publish_parameters(envelope, encoded)

    # -- publishing ----------------------------------------------------------------

    async def publish(
        self,
        event_type: str,
        payload: Mapping[str, Any] | BaseModel,
        *,
        subject: str,
        actor: str,
        conn: asyncpg.Connection | None = None,
        schema_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Envelope:
        """Validate and insert one event; return its envelope.

        With ``conn``: runs on the caller's connection, which must be inside a
        transaction; does not commit: the event exists if and only if that transaction
        commits. Without ``conn``: inserts in its own transaction on a pool connection,
        waiting at most ``acquire_timeout`` for one (PoolExhaustedError). ``payload`` is a
        dict or a pydantic model.
        """
        with self.telemetry.publish_span(event_type, self.producer) as traceparent:
            envelope, encoded = self.build(
                event_type,
                payload,
                subject=subject,
                actor=actor,
                schema_version=schema_version,
                correlation_id=correlation_id,
                causation_id=causation_id,
                occurred_at=occurred_at,
                traceparent=traceparent,
            )
            row = self._row(envelope, encoded)
            with translate_errors(self.schema):
                if conn is not None:
                    self._require_transaction(conn)
                    await conn.execute(self._queries.insert_event, *row)
                else:
                    async with self._acquire("publish") as own:
                        await own.execute(self._queries.insert_event, *row)
        self.telemetry.published(event_type, self.producer, 1)
        return envelope

    async def publish_many(
        self, events: Sequence[EventSpec], *, conn: asyncpg.Connection | None = None
    ) -> list[Envelope]:
        """Validate every event first, then insert them all in one statement (a COPY).

        Nothing is written when any event is invalid. Transaction rules as for publish.
        """
        if isinstance(events, Mapping) or not isinstance(events, Sequence):
            raise UsageError("publish_many takes a sequence of event dicts")
        if not events:
            return []
        with self.telemetry.publish_span("(many)", self.producer) as traceparent:
            built = [self._build_spec(spec, traceparent) for spec in events]
            rows = [self._row(envelope, encoded) for envelope, encoded in built]
            with translate_errors(self.schema):
                if conn is not None:
                    self._require_transaction(conn)
                    await self._copy(conn, rows)
                else:
                    async with self._acquire("publish_many") as own:
                        await self._copy(own, rows)
        envelopes = [envelope for envelope, _ in built]
        for event_type, count in Counter(envelope.event_type for envelope in envelopes).items():
            self.telemetry.published(event_type, self.producer, count)
        return envelopes

    async def _copy(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        # COPY in binary, not a multi-row INSERT of unnested arrays: the server skips
        # parsing and planning a statement and exploding twelve arrays, and the insert
        # triggers (row and statement) fire the same. The column types are looked up once
        # per connection (asyncpg caches the statement it introspects them with).
        await conn.copy_records_to_table(
            "dispatcher_event", records=rows, columns=PUBLISH_COLUMNS, schema_name=self.schema
        )

    def _build_spec(self, spec: EventSpec, traceparent: str | None) -> tuple[Envelope, str]:
        if not isinstance(spec, Mapping):
            raise UsageError("each event given to publish_many must be a dict")
        unknown = spec.keys() - _SPEC_KEYS
        if unknown:
            raise UsageError(f"unknown keys in an event given to publish_many: {sorted(unknown)}")
        try:
            event_type, payload = spec["event_type"], spec["payload"]
            subject, actor = spec["subject"], spec["actor"]
        except KeyError as exc:
            raise UsageError(f"an event given to publish_many lacks {exc.args[0]!r}") from None
        return self.build(
            event_type,
            payload,
            subject=subject,
            actor=actor,
            schema_version=spec.get("schema_version"),
            correlation_id=spec.get("correlation_id"),
            causation_id=spec.get("causation_id"),
            occurred_at=spec.get("occurred_at"),
            traceparent=traceparent,
        )

    @staticmethod
    def _require_transaction(conn: asyncpg.Connection) -> None:
        if not conn.is_in_transaction():
            raise NotInTransactionError(
                "publish(conn=...) needs a connection inside a transaction "
                "(async with conn.transaction(): ...), so that the event commits "
                "with your own writes; omit conn to publish in a transaction of its own"
            )

    def _require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise UsageError("this Dispatcher has no pool: pass conn=... to publish")
        return self.pool

    @contextlib.asynccontextmanager
    async def _acquire(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """A pool connection within ``acquire_timeout``; a starved pool raises, never hangs."""
        pool = self._require_pool()
        try:
            conn = await pool.acquire(timeout=self.acquire_timeout)
        except TimeoutError as exc:
            # The timeout also covers opening a new connection: only a pool with every
            # slot open and none idle is starved; otherwise the server did not answer.
            if pool.get_size() >= pool.get_max_size() and pool.get_idle_size() == 0:
                raise PoolExhaustedError(
                    f"{what} found no free pool connection",
                    pool.get_max_size(),
                    self.acquire_timeout,
                ) from exc
            raise DatabaseUnavailableError(
                f"{what}: no connection to the database within {self.acquire_timeout:g}s "
                "(is the server up and answering?)"
            ) from exc
        try:
            yield conn
        finally:
            await pool.release(conn)


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
    """The first nesting depth above ``limit`` found in ``value``, or None; no recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return depth
        if isinstance(item, Mapping):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
    return None
