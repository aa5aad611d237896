"""Publishing: build, validate and insert envelopes inside the caller's transaction."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict

import asyncpg
from pydantic import BaseModel

from ._codec import PUBLISH_COLUMNS
from ._contracts.batch import SPEC_KEYS, build_many
from ._contracts.building import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    OCCURRED_AT_MAX,
    OCCURRED_AT_MIN,
    EnvelopeBuilder,
    has_nul,
)
from ._db import translate_errors
from ._envelope import Envelope
from ._errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidSettingError,
    NotInTransactionError,
    PoolExhaustedError,
    UsageError,
)
from ._identifiers import validate_schema_name
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

#: Seconds publish waits for a pool connection before it raises PoolExhaustedError.
DEFAULT_ACQUIRE_TIMEOUT = 10.0


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


# The name the inbox imports: one definition of what jsonb refuses.
_has_nul = has_nul
#: Where the encoded payload sits in an insert row (publish_parameters).
_PAYLOAD = PUBLISH_COLUMNS.index("payload")


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
        self._builder = EnvelopeBuilder(self.registry, producer, tenant_id, max_payload_bytes)
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
        envelope, row = self._builder.build(
            event_type,
            payload,
            subject,
            actor,
            schema_version,
            correlation_id,
            causation_id,
            occurred_at,
            traceparent,
        )
        return envelope, row[_PAYLOAD]

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
            envelope, row = self._builder.build(
                event_type,
                payload,
                subject,
                actor,
                schema_version,
                correlation_id,
                causation_id,
                occurred_at,
                traceparent,
            )
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
            envelopes, rows = build_many(
                self._builder, events, traceparent, lambda spec: self._build_spec(spec, traceparent)
            )
            with translate_errors(self.schema):
                if conn is not None:
                    self._require_transaction(conn)
                    await self._copy(conn, rows)
                else:
                    async with self._acquire("publish_many") as own:
                        await self._copy(own, rows)
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

    def _build_spec(
        self, spec: EventSpec, traceparent: str | None
    ) -> tuple[Envelope, tuple[Any, ...]]:
        if type(spec) is not dict and not isinstance(spec, Mapping):
            raise UsageError("each event given to publish_many must be a dict")
        if not SPEC_KEYS.issuperset(spec):
            unknown = sorted(key for key in spec if key not in SPEC_KEYS)
            raise UsageError(f"unknown keys in an event given to publish_many: {unknown}")
        try:
            event_type, payload = spec["event_type"], spec["payload"]
            subject, actor = spec["subject"], spec["actor"]
        except KeyError as exc:
            raise UsageError(f"an event given to publish_many lacks {exc.args[0]!r}") from None
        get = spec.get
        return self._builder.build(
            event_type,
            payload,
            subject,
            actor,
            get("schema_version"),
            get("correlation_id"),
            get("causation_id"),
            get("occurred_at"),
            traceparent,
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
            # asyncio.timeout, not acquire(timeout=...): that wraps the wait in a task of
            # its own (asyncio.wait_for), a cost on every publish without conn.
            async with asyncio.timeout(self.acquire_timeout):
                conn = await pool.acquire()
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
