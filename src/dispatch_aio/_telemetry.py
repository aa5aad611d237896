"""Metrics and traces through opentelemetry-api only; the application brings the SDK.

Instruments are created once per meter provider (a :class:`Telemetry` holds them); with
no SDK installed every call lands on OpenTelemetry's no-op implementations. Attributes
are low-cardinality only: event type, consumer, producer, outcome; never event ids.
Where several processes of one consumer report the same thing (their backlog, the
partitions they hold, leases they lost), ``owner`` names the process: its member id, one
per process run. The partition of an event (256 values) goes on its CONSUMER span
(``messaging.destination.partition.id``), not on metrics.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

__all__ = ["Telemetry"]

_INSTRUMENTATION = "dispatch_aio"
_NOOP_TRACER_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_defaults: dict[tuple[int, int], Telemetry] = {}
_defaults_lock = threading.Lock()


class Telemetry:
    """The instruments and tracer dispatch-aio reports to.

    ``Telemetry.default()`` uses the global providers; pass your own providers to build
    one for a test or an application that does not set the globals.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        meter = metrics.get_meter(_INSTRUMENTATION, meter_provider=meter_provider)
        self.tracer = trace.get_tracer(_INSTRUMENTATION, tracer_provider=tracer_provider)
        self._tracer_provider = tracer_provider
        self._tracing = False
        self._tracing_recheck_at = 0.0
        self.publish_count = meter.create_counter(
            "dispatcher.publish.count", unit="{event}", description="Events published"
        )
        self.consume_count = meter.create_counter(
            "dispatcher.consume.count", unit="{event}", description="Events given an outcome"
        )
        self.dedup_hit_count = meter.create_counter(
            "dispatcher.dedup_hit.count",
            unit="{event}",
            description="Events skipped because this consumer had handled them",
        )
        self.dead_letter_count = meter.create_counter(
            "dispatcher.dead_letter.count", unit="{event}", description="Events dead-lettered"
        )
        self.retry_count = meter.create_counter(
            "dispatcher.retry.count", unit="{attempt}", description="Handler attempts retried"
        )
        self.end_to_end_latency = meter.create_histogram(
            "dispatcher.end_to_end_latency_ms",
            unit="ms",
            description="From occurred_at to the handler's start",
        )
        self.handler_latency = meter.create_histogram(
            "dispatcher.handler_latency_ms", unit="ms", description="Handler run time"
        )
        self.delivery_count = meter.create_counter(
            "dispatcher.delivery.count",
            unit="{event}",
            description="Fan-out deliveries per endpoint: delivered, retried, dead_lettered",
        )
        self.delivery_latency = meter.create_histogram(
            "dispatcher.delivery.latency_ms",
            unit="ms",
            description="Fan-out POST round trip, per endpoint",
        )
        self.inbox_count = meter.create_counter(
            "dispatcher.inbox.count",
            unit="{request}",
            description="Inbox requests by outcome (accepted, duplicate, refused, ...)",
        )
        self.lease_lost_count = meter.create_counter(
            "dispatcher.lease_lost.count",
            unit="{group}",
            description="Outcomes or attempts refused because the partition's lease was lost",
        )
        self._partition_sources: list[Callable[[], tuple[int, dict[str, str]]]] = []
        self.consumer_partitions = meter.create_observable_gauge(
            "dispatcher.consumer.partitions",
            callbacks=[self._observe_partitions],
            unit="{partition}",
            description="Partitions a process of a consumer holds (of 256)",
        )
        self._lag_sources: list[Callable[[], Iterable[tuple[int, dict[str, str]]]]] = []
        self.consumer_lag = meter.create_observable_gauge(
            "dispatcher.consumer.lag",
            callbacks=[self._observe_lag],
            unit="{event}",
            description="Events a consumer has read and not yet given an outcome",
        )

    @classmethod
    def default(cls) -> Telemetry:
        """The Telemetry of the current global providers (created once per provider pair)."""
        key = (id(metrics.get_meter_provider()), id(trace.get_tracer_provider()))
        found = _defaults.get(key)
        if found is None:
            with _defaults_lock:
                found = _defaults.get(key)
                if found is None:
                    found = _defaults[key] = cls()
        return found

    def tracing_enabled(self) -> bool:
        """False while no tracer provider is installed: spans are skipped, not made no-op.

        Looking the global provider up costs about a microsecond, so the answer is kept
        for a second: an SDK installed after start-up is picked up within that second.
        """
        now = time.monotonic()
        if now >= self._tracing_recheck_at:
            provider = self._tracer_provider or trace.get_tracer_provider()
            self._tracing = not isinstance(provider, _NOOP_TRACER_PROVIDERS)
            self._tracing_recheck_at = now + 1.0
        return self._tracing

    # -- publish -------------------------------------------------------------------

    @contextlib.contextmanager
    def publish_span(self, event_type: str, producer: str) -> Iterator[str | None]:
        """A PRODUCER span; yields the W3C traceparent to store, or None when not sampled."""
        if not self.tracing_enabled():
            yield None
            return
        with self.tracer.start_as_current_span(
            f"{event_type} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "dispatch_aio",
                "messaging.operation.type": "publish",
                "messaging.destination.name": event_type,
                "dispatch_aio.producer": producer,
            },
        ) as span:
            if not span.get_span_context().is_valid:
                yield None
                return
            carrier: dict[str, str] = {}
            inject(carrier)
            yield carrier.get("traceparent")

    def published(self, event_type: str, producer: str, count: int) -> None:
        """Count published events."""
        self.publish_count.add(count, {"event_type": event_type, "producer": producer})

    # -- consume -------------------------------------------------------------------

    @contextlib.contextmanager
    def consume_span(
        self,
        *,
        event_type: str,
        event_id: str,
        consumer: str,
        attempt: int,
        traceparent: str | None,
        partition: int | None = None,
    ) -> Iterator[trace.Span]:
        """A CONSUMER span per handler attempt: a child of the producer's context, linked to it.

        Exceptions are not recorded automatically: report a failed attempt with
        :meth:`mark_error`.
        """
        if not self.tracing_enabled():
            yield trace.INVALID_SPAN
            return
        parent = extract({"traceparent": traceparent}) if traceparent else None
        links = []
        if parent is not None:
            producer_ctx = trace.get_current_span(parent).get_span_context()
            if producer_ctx.is_valid:
                links.append(Link(producer_ctx))
        with self.tracer.start_as_current_span(
            f"{event_type} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            # The consumer records a handler's exception with mark_error; recording it
            # here as well would put two exception events on the span.
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                "messaging.system": "dispatch_aio",
                "messaging.operation.type": "process",
                "messaging.destination.name": event_type,
                "messaging.message.id": event_id,
                "messaging.consumer.group.name": consumer,
                "dispatch_aio.attempt": attempt,
                **(
                    {}
                    if partition is None or partition < 0
                    else {"messaging.destination.partition.id": str(partition)}
                ),
            },
        ) as span:
            yield span

    @staticmethod
    def mark_error(span: trace.Span, exc: BaseException) -> None:
        """Record a handler exception on its span."""
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))

    def consumed(
        self, event_type: str, consumer: str, producer: str, outcome: str, count: int = 1
    ) -> None:
        """Count ``count`` events' outcome (handled, dead_lettered)."""
        self.consume_count.add(
            count,
            {
                "event_type": event_type,
                "consumer": consumer,
                "producer": producer,
                "outcome": outcome,
            },
        )

    def dedup_hit(self, event_type: str, consumer: str) -> None:
        """Count an event skipped because it was already handled."""
        self.dedup_hit_count.add(1, {"event_type": event_type, "consumer": consumer})

    def retried(self, event_type: str, consumer: str) -> None:
        """Count a failed attempt that will be retried."""
        self.retry_count.add(1, {"event_type": event_type, "consumer": consumer})

    def dead_lettered(self, event_type: str, consumer: str, reason: str) -> None:
        """Count a dead letter; ``reason`` is ``exhausted`` or ``invalid``."""
        self.dead_letter_count.add(
            1, {"event_type": event_type, "consumer": consumer, "outcome": reason}
        )

    def observe_latency(
        self, event_type: str, consumer: str, end_to_end_ms: float, handler_ms: float
    ) -> None:
        """Record the end-to-end and handler latencies of one handled event."""
        attrs = {"event_type": event_type, "consumer": consumer}
        self.end_to_end_latency.record(end_to_end_ms, attrs)
        self.handler_latency.record(handler_ms, attrs)

    # -- cross-service delivery -------------------------------------------------------

    @contextlib.contextmanager
    def delivery_span(
        self, *, endpoint: str, event_type: str, event_id: str, url: str, traceparent: str | None
    ) -> Iterator[tuple[trace.Span, dict[str, str]]]:
        """A CLIENT span for one fan-out POST; yields it with the headers that carry it.

        The span is a child of the current context (the fan-out consumer's span) or,
        without one, of the event's ``traceparent``. With tracing off, the headers pass
        the event's own ``traceparent`` on unchanged.
        """
        if not self.tracing_enabled():
            yield trace.INVALID_SPAN, ({"traceparent": traceparent} if traceparent else {})
            return
        parent = None
        if not trace.get_current_span().get_span_context().is_valid and traceparent:
            parent = extract({"traceparent": traceparent})
        with self.tracer.start_as_current_span(
            f"{event_type} deliver",
            context=parent,
            kind=SpanKind.CLIENT,
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                "http.request.method": "POST",
                "url.full": url,
                "messaging.message.id": event_id,
                "dispatch_aio.endpoint": endpoint,
            },
        ) as span:
            carrier: dict[str, str] = {}
            inject(carrier)
            yield span, carrier

    def delivery_result(
        self, span: trace.Span, *, endpoint: str, event_type: str, outcome: str, status: int | None
    ) -> None:
        """Count one delivery attempt's outcome (delivered, retried, dead_lettered) per endpoint."""
        self.delivery_count.add(
            1, {"endpoint": endpoint, "event_type": event_type, "outcome": outcome}
        )
        if span.is_recording():
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if outcome != "delivered":
                span.set_status(Status(StatusCode.ERROR, outcome))

    def observe_delivery_latency(self, endpoint: str, milliseconds: float) -> None:
        """Record one POST's round trip to ``endpoint``."""
        self.delivery_latency.record(milliseconds, {"endpoint": endpoint})

    @contextlib.contextmanager
    def inbox_span(self, traceparent: str | None) -> Iterator[trace.Span]:
        """A SERVER span for one inbox request, continuing the sender's trace."""
        if not self.tracing_enabled():
            yield trace.INVALID_SPAN
            return
        parent = extract({"traceparent": traceparent}) if traceparent else None
        with self.tracer.start_as_current_span(
            "inbox receive",
            context=parent,
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
            attributes={"http.request.method": "POST", "messaging.system": "dispatch_aio"},
        ) as span:
            yield span

    def inbox_result(self, span: trace.Span, outcome: str, status: int) -> None:
        """Count one inbox request by outcome; mark its span."""
        self.inbox_count.add(1, {"outcome": outcome})
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("dispatch_aio.inbox.outcome", outcome)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, outcome))

    def track_partitions(
        self, consumer: str, owner: str, held: Callable[[], int]
    ) -> Callable[[], None]:
        """Report how many partitions ``owner`` holds through ``dispatcher.consumer.partitions``.

        ``held()`` is called from the metric reader's thread: it must only read a count.
        Returns the function that stops the reporting.
        """
        attrs = {"consumer": consumer, "owner": owner}

        def source() -> tuple[int, dict[str, str]]:
            return held(), attrs

        self._partition_sources.append(source)
        return lambda: self._partition_sources.remove(source)

    def _observe_partitions(
        self, options: metrics.CallbackOptions
    ) -> Iterable[metrics.Observation]:
        for source in list(self._partition_sources):
            value, attrs = source()
            yield metrics.Observation(value, attrs)

    def lease_lost(self, consumer: str, owner: str) -> None:
        """Count a group's outcome (or an attempt) the fence refused."""
        self.lease_lost_count.add(1, {"consumer": consumer, "owner": owner})

    def track_backlog(
        self,
        consumer: str,
        event_types: Sequence[str],
        backlog: Callable[[], Iterable[str]],
        owner: str | None = None,
    ) -> Callable[[], None]:
        """Report a consumer's backlog per event type through ``dispatcher.consumer.lag``.

        ``backlog()`` gives the event type of each event the consumer has read and not yet
        given an outcome; subscribed types with none report 0. It is called from the
        metric reader's thread, so it must only take a snapshot. ``owner`` (the process's
        member id) tells the processes of one consumer apart. Returns the function that
        stops the reporting.
        """
        types = tuple(event_types)
        base = {"consumer": consumer} if owner is None else {"consumer": consumer, "owner": owner}

        def source() -> Iterable[tuple[int, dict[str, str]]]:
            counts = dict.fromkeys(types, 0)
            for event_type in backlog():
                counts[event_type] = counts.get(event_type, 0) + 1
            return [(count, {**base, "event_type": t}) for t, count in counts.items()]

        self.add_lag_source(source)
        return lambda: self.remove_lag_source(source)

    def add_lag_source(self, source: Callable[[], Iterable[tuple[int, dict[str, str]]]]) -> None:
        """Report ``source()``'s (lag, attributes) pairs through one observable gauge."""
        self._lag_sources.append(source)

    def remove_lag_source(self, source: Callable[[], Iterable[tuple[int, dict[str, str]]]]) -> None:
        """Stop reporting a lag source added with add_lag_source."""
        with contextlib.suppress(ValueError):
            self._lag_sources.remove(source)

    def _observe_lag(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        for source in list(self._lag_sources):
            for value, attrs in source():
                yield metrics.Observation(value, attrs)
