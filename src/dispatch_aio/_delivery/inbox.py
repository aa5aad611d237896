"""The inbox: take a signed event from another service into the local event table, once.

Framework-free: :meth:`Inbox.receive` takes the request's headers and body and returns
the answer to send (the FastAPI router in ``dispatch_aio.inbox`` is a thin wrapper; the
body-size limit is enforced there, while the body streams in). The order of checks is
the contract:

1. signature and timestamp (401, with no detail: nothing is parsed before this passes,
   and nothing is ever written for a request that fails it);
2. the body: UTF-8 JSON, one object, no duplicate keys, no NaN (400);
3. the envelope and payload against the local registry, and ``webhook-id`` equal to
   ``event_id`` (422, naming the JSON path);
4. insert into ``dispatcher_event`` keeping the event's original event_id, producer,
   tenant, subject, occurred_at and traceparent, and answer 200 only once that row is
   committed. Requests that arrive together share one insert statement and so one
   commit (``inbox_writer``: group commit); a row that fails alone fails only its own
   request. A redelivered event_id meets the unique key and writes nothing (200 all
   the same); local consumers then receive the event with all their guarantees.

A database that does not answer gives 503 (the sender retries). With an at-least-once
sender, the idempotent insert makes the insertion exactly-once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from opentelemetry import trace
from pydantic_core import from_json, to_json

from .._dispatcher import DEFAULT_MAX_PAYLOAD_BYTES, _has_nul
from .._errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    EventValidationError,
    SignatureVerificationError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
)
from .._identifiers import validate_schema_name
from .._registry import Registry
from .._telemetry import Telemetry
from .inbox_writer import InboxRow, InboxWriter
from .signatures import WebhookSecrets

__all__ = ["DEFAULT_MAX_BODY_BYTES", "Inbox", "InboxResponse"]

logger = logging.getLogger("dispatch_aio.inbox")

#: The largest payload publish accepts, plus room for the envelope around it.
DEFAULT_MAX_BODY_BYTES = DEFAULT_MAX_PAYLOAD_BYTES + 64 * 1024

_SIGNED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


@dataclass(frozen=True, slots=True)
class InboxResponse:
    """The answer to one inbox request: HTTP status, JSON body, extra headers.

    ``outcome`` is the short name used in metrics and logs: accepted, duplicate,
    unauthorized, malformed, invalid, too_large, unavailable, error.
    """

    status: int
    outcome: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class _Malformed(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise _Malformed("duplicate keys in a JSON object")
    return data


def _no_constants(name: str) -> Any:
    raise _Malformed(f"{name} is not JSON")


# Built once: json.loads with hooks would build a new decoder for every request.
_decode = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants).decode


def _parse(body: bytes) -> tuple[Any, str]:
    """The body's JSON data, and the body as text."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("the body is not UTF-8") from None
    # pydantic's parser (a dependency already) takes a third of the standard decoder's
    # time (only keys cached: values are mostly ids, each seen once), but keeps the last
    # of duplicate keys without a word. So its data is used only when writing it back
    # out gives the body's very bytes, as a fan-out body does (written by that
    # serializer): a duplicate key, dropped, would make it shorter. Anything else (other
    # spacing or escapes, NaN, deep nesting) goes to the strict decoder, which decides
    # and says what is wrong.
    try:
        data = from_json(text, allow_inf_nan=False, cache_strings="keys")
    except ValueError:
        pass
    else:
        if to_json(data) == body:
            return data, text
    try:
        return _decode(text), text
    except _Malformed:
        raise
    except (ValueError, RecursionError) as exc:
        raise _Malformed(f"the body is not JSON ({type(exc).__name__})") from None


class Inbox:
    """Verifies, validates and inserts events sent by another service's fan-out.

    ``secrets``: the ``whsec_`` secrets this inbox accepts (newest first), or a
    :class:`WebhookSecrets`. The registry defaults to the bundled contracts. Accepted
    events that arrive together are inserted in one transaction on a pool connection
    (group commit), each answered once that transaction has committed. A caller
    cancelled while it waits may still have its row committed: the sender, getting no
    answer, sends it again and the redelivery answers 200 with no second row.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        secrets: WebhookSecrets | Iterable[str],
        registry: Registry | None = None,
        schema: str = "public",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        acquire_timeout: float = 5.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        if max_body_bytes <= 0:
            raise ConfigurationError("max_body_bytes must be positive")
        self.pool = pool
        self.secrets = secrets if isinstance(secrets, WebhookSecrets) else WebhookSecrets(secrets)
        self.registry = registry if registry is not None else Registry.load()
        self.schema = validate_schema_name(schema)
        self.max_body_bytes = max_body_bytes
        self.acquire_timeout = acquire_timeout
        self.telemetry = telemetry if telemetry is not None else Telemetry.default()
        self._writer = InboxWriter(pool, schema=self.schema, acquire_timeout=acquire_timeout)

    def too_large(self) -> InboxResponse:
        """The answer to a body over ``max_body_bytes`` (sent before it is read whole)."""
        response = InboxResponse(
            413, "too_large", {"error": "body too large", "limit_bytes": self.max_body_bytes}
        )
        self.telemetry.inbox_count.add(1, {"outcome": response.outcome})
        return response

    async def receive(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        *,
        now: float | None = None,
    ) -> InboxResponse:
        """Check and store one request; return the answer. Never raises for bad input.

        ``headers`` are the request's (name, value) pairs, names in any case. ``now``
        (Unix seconds) is for tests of the timestamp tolerance.
        """
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        signed: dict[str, str] = {}
        duplicated = False
        traceparent: str | None = None
        for name, value in pairs:
            lowered = name.lower()
            if lowered in _SIGNED_HEADERS:
                duplicated |= lowered in signed
                signed[lowered] = value
            elif lowered == "traceparent":
                traceparent = value
        telemetry = self.telemetry
        if not telemetry.tracing_enabled():
            # No span to make: the outcome is counted without entering its context.
            response = await self._receive(signed, duplicated, body, now)
            telemetry.inbox_result(trace.INVALID_SPAN, response.outcome, response.status)
            return response
        with telemetry.inbox_span(traceparent) as span:
            response = await self._receive(signed, duplicated, body, now)
            telemetry.inbox_result(span, response.outcome, response.status)
            return response

    async def _receive(
        self, signed: dict[str, str], duplicated: bool, body: bytes, now: float | None
    ) -> InboxResponse:
        if len(body) > self.max_body_bytes:
            return self.too_large()
        try:
            if duplicated:
                raise SignatureVerificationError("a webhook header is repeated")
            msg_id = self.secrets.verify(signed, body, now=now)
        except SignatureVerificationError as exc:
            logger.warning("inbox refused a request: %s", exc.reason)
            # The same answer whatever failed: a caller learns nothing about the check.
            return InboxResponse(401, "unauthorized", {"error": "unauthorized"})
        try:
            data, text = _parse(body)
        except _Malformed as exc:
            return InboxResponse(400, "malformed", {"error": "malformed body", "detail": str(exc)})
        try:
            row = self._validate(msg_id, data, body, text)
        except EventValidationError as exc:
            return _invalid(exc.what, exc.path, exc.reason)
        except UnknownEventTypeError as exc:
            return _invalid("envelope", "$.event_type", str(exc))
        except UnknownSchemaVersionError as exc:
            return _invalid("envelope", "$.schema_version", str(exc))
        return await self._store(row)

    def _validate(self, msg_id: str, data: Any, body: bytes, text: str) -> InboxRow:
        """The row to insert for a verified body; raises when the event is not valid."""
        registry = self.registry
        registry.validate_envelope(data)
        event_type, version = data["event_type"], data["schema_version"]
        registry.validate_payload(event_type, version, data["payload"])
        if data["event_id"] != msg_id:
            raise EventValidationError(
                event_type, version, "$.event_id", "differs from the signed webhook-id"
            )
        # Valid JSON can only spell U+0000 as the escape \u0000 (a raw control character
        # is refused by the parser): without those six bytes, no walk through the data.
        if b"\\u0000" in body and _has_nul(data):
            raise EventValidationError(
                event_type, version, "$", "PostgreSQL cannot store U+0000 in text"
            )
        # The envelope schema has settled every field's type and spelling (occurred_at:
        # RFC 3339 in UTC with a real calendar day, hours 00-23), so the row is read off
        # the data as it is, without a model built and checked a second time.
        try:
            occurred_at = datetime.fromisoformat(data["occurred_at"])
        except ValueError as exc:  # not expected after the schema: refused all the same
            raise EventValidationError(event_type, version, "$.occurred_at", str(exc)) from None
        return (
            data["event_id"],
            event_type,
            version,
            data["tenant_id"],
            data["producer"],
            data["subject"],
            data["actor"],
            occurred_at,
            data.get("correlation_id"),
            data.get("causation_id"),
            data.get("traceparent"),
            # The payload goes in as the body holds it: PostgreSQL takes it out of the
            # (validated) envelope, with no second encoding here.
            text,
            registry.payload_digest(event_type, version),
        )

    async def _store(self, row: InboxRow) -> InboxResponse:
        event_id = row[0]
        try:
            written = await self._writer.insert(row)
        except (DatabaseUnavailableError, TimeoutError) as exc:
            logger.warning("inbox cannot reach its database: %s", exc)
            return InboxResponse(
                503, "unavailable", {"error": "database unavailable"}, {"retry-after": "5"}
            )
        except DatabaseError as exc:
            logger.error("inbox could not store %s: %s", event_id, exc)
            return InboxResponse(500, "error", {"error": "could not store the event"})
        outcome = "accepted" if written else "duplicate"
        return InboxResponse(200, outcome, {"status": outcome, "event_id": event_id})


def _invalid(what: str, path: str, reason: str) -> InboxResponse:
    return InboxResponse(
        422, "invalid", {"error": f"invalid {what}", "path": path, "detail": reason}
    )
