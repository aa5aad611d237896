"""Fan-out: a consumer per subscriber endpoint that POSTs each event's envelope, signed.

Each endpoint of a :class:`FanoutConfig` gets a :class:`~dispatch_aio.Consumer` named
``fanout.<subscriber>``, subscribed to the event types whose registry entry lists that
subscriber. So each endpoint has its own cursor, per-subject order, retries with
jitter, dead letters, replay and status: a subscriber that is down holds back only its
own consumer, never another endpoint's.

The handler gets each event as stored (a StoredEvent: the payload is not checked
against its schema a second time, the inbox does that) and POSTs the envelope as JSON
with Standard Webhooks headers, signed afresh on every attempt (the timestamp must be
recent), over an HTTP/1.1 client of the endpoint's own (``transport``: keep-alive pool,
connection limits, connect/read timeouts, a total deadline per attempt, the SSRF guard
on each connection). The answer decides the outcome (see ``responses``): 2xx
delivered; 410 and other 4xx :class:`~dispatch_aio.Reject`; 429/503
:class:`~dispatch_aio.RetryAfter`; 5xx, timeouts and connection errors are ordinary
failures, retried.

Delivery is at-least-once: a POST whose answer is lost, or an event whose group rolls
back after its POST, is sent again with the same event_id; the inbox's insert is
idempotent on event_id, so each event is inserted on the receiving side exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import asyncpg
from opentelemetry import trace
from pydantic import BaseModel
from pydantic_core import to_json

from .._consume import ConsumerConfig
from .._consume._codec import StoredEvent
from .._consume._handlers import taking_stored_events
from .._consume._signals import drain_on_signals
from .._consumer import Consumer
from .._envelope import Envelope, format_timestamp
from .._errors import ConfigurationError, LifecycleError
from .._pool import open_pool
from .._registry import Registry
from .._signals import Reject
from .._telemetry import Telemetry
from .config import Endpoint, FanoutConfig, consumer_name_for
from .responses import check_response
from .ssrf import Resolver, system_resolve
from .transport import EndpointClient

__all__ = ["Fanout", "run_fanout"]

logger = logging.getLogger("dispatch_aio.fanout")

_USER_AGENT = "dispatch-aio-fanout/1"
_EXCERPT_BYTES = 512
#: The longest answer read to its end, so that its connection can be used again.
_DRAIN_BYTES = 64 * 1024
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class _Deliverer:
    """POSTs events to one endpoint and turns the answer into the event's outcome."""

    def __init__(
        self, name: str, endpoint: Endpoint, client: EndpointClient, telemetry: Telemetry
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.client = client
        self.telemetry = telemetry
        self.secrets = endpoint.webhook_secrets()
        self.attempts_before_dead_letter = len(endpoint.retry_delays) + 1

    async def deliver(self, event: StoredEvent) -> None:
        """The consumer's handler: one POST attempt (raises to retry or reject)."""
        body = stored_envelope_json(event)
        headers = self.secrets.sign(event.event_id, body)
        headers["content-type"] = "application/json"
        telemetry = self.telemetry
        if not telemetry.tracing_enabled():
            # No span to make: skip the context manager (it would only pass the event's
            # own traceparent on, as here).
            if event.traceparent:
                headers["traceparent"] = event.traceparent
            await self._attempt(event, body, headers, trace.INVALID_SPAN)
            return
        with telemetry.delivery_span(
            endpoint=self.name,
            event_type=event.event_type,
            event_id=event.event_id,
            url=self.endpoint.url,
            traceparent=event.traceparent,
        ) as (span, carrier):
            headers.update(carrier)
            await self._attempt(event, body, headers, span)

    async def _attempt(
        self, event: StoredEvent, body: bytes, headers: dict[str, str], span: trace.Span
    ) -> None:
        endpoint = self.endpoint
        outcome = "retried"
        status: int | None = None
        started = time.perf_counter()
        try:
            # The client bounds the whole attempt itself: one timer per POST.
            answer = await self.client.post(body, headers, timeout=endpoint.total_timeout)
            status = answer.status
            self.telemetry.observe_delivery_latency(
                self.name, (time.perf_counter() - started) * 1000.0
            )
            check_response(
                self.name,
                status,
                answer.headers,
                answer.excerpt,
                retry_after_cap=endpoint.retry_after_cap,
            )
            outcome = "delivered"
        except Reject:
            outcome = "dead_lettered"
            raise
        except Exception:
            outcome = (
                "dead_lettered" if event.attempt >= self.attempts_before_dead_letter else "retried"
            )
            raise
        finally:
            self.telemetry.delivery_result(
                span,
                endpoint=self.name,
                event_type=event.event_type,
                outcome=outcome,
                status=status,
            )


def envelope_json(event: Envelope) -> bytes:
    """The envelope as the POST's body: UTF-8 JSON, optional fields left out when unset.

    The same document as ``event.to_json_dict()`` encoded; this runs once per POST.
    """
    payload = event.payload
    if isinstance(payload, BaseModel):
        return _encode(event.to_json_dict())
    data: dict[str, Any] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "occurred_at": format_timestamp(event.occurred_at),
        "tenant_id": event.tenant_id,
        "producer": event.producer,
        "subject": event.subject,
        "actor": event.actor,
        "payload": payload,
    }
    if event.correlation_id is not None:
        data["correlation_id"] = event.correlation_id
    if event.causation_id is not None:
        data["causation_id"] = event.causation_id
    if event.traceparent is not None:
        data["traceparent"] = event.traceparent
    return _encode(data)


def stored_envelope_json(event: StoredEvent) -> bytes:
    """:func:`envelope_json` of the Event the consumer would build from ``event``'s row.

    The same bytes, without the Event: the fan-out forwards each event as it was stored
    (its payload checked when published; the receiving side checks it again).
    """
    row = event.row
    data: dict[str, Any] = {
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "schema_version": row["schema_version"],
        "occurred_at": event.occurred_at,
        "tenant_id": row["tenant_id"],
        "producer": row["producer"],
        "subject": row["subject"],
        "actor": row["actor"],
        "payload": event.payload,
    }
    value = row["correlation_id"]
    if value is not None:
        data["correlation_id"] = value
    value = row["causation_id"]
    if value is not None:
        data["causation_id"] = value
    value = row["traceparent"]
    if value is not None:
        data["traceparent"] = value
    return _encode(data)


def _encode(data: dict[str, Any]) -> bytes:
    """``data`` as compact UTF-8 JSON; ValueError for a float that JSON cannot spell.

    pydantic's serializer (a dependency already) writes the same bytes as the standard
    encoder with ``ensure_ascii=False`` in a fifth of its time. It would write NaN and
    infinities as bare words, which are not JSON: when those letters appear anywhere
    (almost always inside a string), the standard encoder decides, refusing a
    non-finite float as it always has.
    """
    body = to_json(data, inf_nan_mode="constants")
    if b"NaN" in body or b"Infinity" in body:
        return _dumps(data).encode()
    return body


class Fanout:
    """Runs one fan-out consumer per endpoint of a configuration.

    ::

        fanout = Fanout(pool, FanoutConfig.load("fanout.json"))
        async with fanout:
            await fanout.wait()        # until stop(), or a consumer fails

    The pool serves every endpoint's consumer: size it at least the sum of
    ``concurrency + 2`` over the endpoints (a worker holds its connection during the
    POST, since the event's outcome commits right after). ``consumer_options`` are
    extra :class:`~dispatch_aio.ConsumerConfig` settings for every endpoint's consumer
    (tests use them to shorten delays). Single use, like a Consumer.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: FanoutConfig,
        *,
        registry: Registry | None = None,
        telemetry: Telemetry | None = None,
        resolve: Resolver = system_resolve,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry if registry is not None else Registry.load()
        self.telemetry = telemetry if telemetry is not None else Telemetry.default()
        self.consumers: dict[str, Consumer] = {}
        self._clients: list[EndpointClient] = []
        self._started = False
        for name, endpoint in config.endpoints.items():
            event_types = config.event_types_for(name, self.registry)
            if not event_types:
                raise ConfigurationError(
                    f"no event type in the registry lists subscriber {name!r}: "
                    "check the name against the registry's subscribers"
                )
            settings: dict[str, Any] = {
                "name": consumer_name_for(name),
                "db_schema": config.db_schema,
                "concurrency": endpoint.concurrency,
                "max_group": endpoint.max_group,
                "retry_delays": endpoint.retry_delays,
                # The POST has its own deadline; this only catches a hang around it.
                "handler_timeout": endpoint.total_timeout + 5.0,
            }
            settings.update(consumer_options or {})
            consumer = Consumer(
                pool,
                config=ConsumerConfig(**settings),
                registry=self.registry,
                telemetry=self.telemetry,
            )
            client = EndpointClient(
                endpoint,
                resolve=resolve,
                user_agent=_USER_AGENT,
                excerpt_bytes=_EXCERPT_BYTES,
                drain_limit=_DRAIN_BYTES,
            )
            self._clients.append(client)
            deliverer = _Deliverer(name, endpoint, client, self.telemetry)
            subscriptions = consumer._subscriptions
            for event_type in event_types:
                consumer.on(event_type)(deliverer.deliver)
                # Events are forwarded as stored: no Event built and no second schema
                # check of the payload (the inbox checks it). Both cost about an eighth
                # of the sender's CPU per event on the fan-out benchmark.
                subscriptions[event_type] = taking_stored_events(subscriptions[event_type])
            self.consumers[name] = consumer

    @property
    def started(self) -> bool:
        """True once :meth:`start` has been called."""
        return self._started

    async def start(self) -> None:
        """Start every endpoint's consumer; if one cannot start, stop the others and raise."""
        if self._started:
            raise LifecycleError("a Fanout runs once: make a new one")
        self._started = True
        try:
            for consumer in self.consumers.values():
                await consumer.start()
        except BaseException:
            await self.aclose()
            raise

    def stop(self) -> None:
        """Ask every consumer to drain and stop; returns at once."""
        for consumer in self.consumers.values():
            consumer.stop()

    async def wait(self) -> None:
        """Wait until every consumer has stopped; if one fails, stop the rest and re-raise."""
        waits = {
            asyncio.ensure_future(consumer.wait()): name
            for name, consumer in self.consumers.items()
        }
        failure: BaseException | None = None
        pending = set(waits)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and failure is None:
                    logger.error("fan-out to %s stopped: %s", waits[task], exc)
                    failure = exc
                    self.stop()
        if failure is not None:
            raise failure

    async def aclose(self) -> None:
        """Stop, drain, and close every consumer and HTTP client. Idempotent."""
        self.stop()
        try:
            for consumer in self.consumers.values():
                with contextlib.suppress(Exception):
                    await consumer.aclose()
        finally:
            for client in self._clients:
                await client.aclose()

    async def __aenter__(self) -> Fanout:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def run(self) -> None:
        """Run as a worker process: until SIGTERM or SIGINT (a second one aborts)."""

        def drain() -> None:
            logger.info("signal received: draining the fan-out")
            self.stop()

        def abort() -> None:
            for consumer in self.consumers.values():
                consumer.abort()

        with drain_on_signals(drain, abort):
            async with self:
                await self.wait()


async def run_fanout(
    dsn: str,
    config: FanoutConfig,
    *,
    registry: Registry | None = None,
    telemetry: Telemetry | None = None,
    consumer_options: Mapping[str, Any] | None = None,
) -> None:
    """Run the fan-out of ``config`` against the database at ``dsn`` until SIGTERM/SIGINT.

    Opens a pool sized for every endpoint's workers and closes it at the end: the body
    of ``dispatch-aio fanout CONFIG``. ``consumer_options`` are :class:`Fanout`'s (for
    every endpoint's consumer, e.g. ``lease_timeout``). Raises InvalidDsnError or
    DatabaseUnavailableError (password masked) when the database cannot be reached,
    ConsumerFailedError when an endpoint's consumer fails.
    """
    size = sum(endpoint.concurrency + 2 for endpoint in config.endpoints.values())
    # open_pool: connection errors in one line, never showing the password.
    pool = await open_pool(dsn, min_size=1, max_size=size)
    try:
        await Fanout(
            pool,
            config,
            registry=registry,
            telemetry=telemetry,
            consumer_options=consumer_options,
        ).run()
    finally:
        await pool.close()
