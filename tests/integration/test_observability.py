"""Metrics, traces and logs, read back through opentelemetry-sdk's in-memory exporters."""

from __future__ import annotations

import collections
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from fastapi import FastAPI, Request, Response
from opentelemetry import metrics
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dispatch_aio import Consumer, Dispatcher, Event, Registry, Telemetry
from dispatch_aio.testing import drain

from .helpers import example, locked_payload, uid

pytestmark = pytest.mark.anyio

ALLOWED_ATTRIBUTES = {"event_type", "consumer", "producer", "outcome"}
PREFIXED_ID = re.compile(r"[a-z]{2,8}_[0-9a-f]{8}-")


@dataclass
class Otel:
    telemetry: Telemetry
    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Metric name -> [(attributes, data point)], as collected now."""
        found: dict[str, list[tuple[dict[str, Any], Any]]] = collections.defaultdict(list)
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        found[metric.name].append((dict(point.attributes or {}), point))
        return found

    def spans(self, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if kind is None or s.kind is kind]


@pytest.fixture
def otel() -> Iterator[Otel]:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(meter_provider=meter_provider, tracer_provider=tracer_provider)
    yield Otel(telemetry, reader, exporter, tracer_provider)
    meter_provider.shutdown()
    tracer_provider.shutdown()


def make_dispatcher(
    pool: asyncpg.Pool, otel: Otel, registry: Registry, producer: str = "revenue"
) -> Dispatcher:
    return Dispatcher(
        pool,
        producer=producer,
        tenant_id="tnt_tests",
        telemetry=otel.telemetry,
        registry=registry,
    )


def counter(points: list[tuple[dict[str, Any], Any]]) -> list[tuple[dict[str, Any], int]]:
    return [(attrs, point.value) for attrs, point in points]


async def test_publish_and_handle_report_counters_and_histograms(
    dispatch_pool: asyncpg.Pool, otel: Otel, dispatch_registry: Registry
) -> None:
    dispatcher = make_dispatcher(dispatch_pool, otel, dispatch_registry)
    consumer = Consumer(
        dispatch_pool, name="coaching", telemetry=otel.telemetry, registry=dispatch_registry
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        pass

    two_seconds_ago = datetime.now(UTC) - timedelta(seconds=2)
    await dispatcher.publish(
        "credit.locked",
        locked_payload(),
        subject=uid("crr"),
        actor="system:revenue",
        occurred_at=two_seconds_ago,
    )
    assert (await drain(consumer)).handled == 1

    found = otel.metrics()
    assert counter(found["dispatcher.publish.count"]) == [
        ({"event_type": "credit.locked", "producer": "revenue"}, 1)
    ]
    assert counter(found["dispatcher.consume.count"]) == [
        (
            {
                "event_type": "credit.locked",
                "consumer": "coaching",
                "producer": "revenue",
                "outcome": "handled",
            },
            1,
        )
    ]
    [(e2e_attrs, e2e)] = found["dispatcher.end_to_end_latency_ms"]
    [(handler_attrs, handler)] = found["dispatcher.handler_latency_ms"]
    assert e2e_attrs == handler_attrs == {"event_type": "credit.locked", "consumer": "coaching"}
    assert e2e.count == handler.count == 1
    # End to end runs from occurred_at, not from the insert: at least the two seconds.
    assert 2000 <= e2e.sum < 60_000
    assert 0 <= handler.sum < e2e.sum
    for name in ("dispatcher.retry.count", "dispatcher.dead_letter.count"):
        assert name not in found
    assert_no_ids(found)


async def test_retry_then_dead_letter_counts(
    dispatch_pool: asyncpg.Pool, otel: Otel, dispatch_registry: Registry
) -> None:
    dispatcher = make_dispatcher(dispatch_pool, otel, dispatch_registry)
    consumer = Consumer(
        dispatch_pool,
        name="warehouse",
        telemetry=otel.telemetry,
        registry=dispatch_registry,
        retry_delays=(0, 0),
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        raise RuntimeError(f"boom on attempt {event.attempt}")

    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("crr"), actor="system:revenue"
    )
    result = await drain(consumer)
    assert (result.retried, result.dead_lettered) == (2, 1)

    found = otel.metrics()
    who = {"event_type": "credit.locked", "consumer": "warehouse"}
    assert counter(found["dispatcher.retry.count"]) == [(who, 2)]
    assert counter(found["dispatcher.dead_letter.count"]) == [({**who, "outcome": "exhausted"}, 1)]
    assert counter(found["dispatcher.consume.count"]) == [
        ({**who, "producer": "revenue", "outcome": "dead_lettered"}, 1)
    ]
    assert "dispatcher.end_to_end_latency_ms" not in found  # no attempt succeeded
    assert_no_ids(found)

    # One CONSUMER span per attempt, each with its one exception, in one trace.
    [producer] = otel.spans(SpanKind.PRODUCER)
    attempts = sorted(
        otel.spans(SpanKind.CONSUMER), key=lambda s: (s.attributes or {})["dispatch_aio.attempt"]
    )
    assert [(s.attributes or {})["dispatch_aio.attempt"] for s in attempts] == [1, 2, 3]
    for number, span in enumerate(attempts, start=1):
        assert span.status.status_code is StatusCode.ERROR
        [raised] = [e for e in span.events if e.name == "exception"]
        assert raised.attributes is not None
        assert raised.attributes["exception.type"] == "RuntimeError"
        assert raised.attributes["exception.message"] == f"boom on attempt {number}"
        assert span.context is not None
        assert producer.context is not None
        assert span.context.trace_id == producer.context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == producer.context.span_id
        assert (span.attributes or {})["messaging.message.id"] == envelope.event_id


async def test_publish_in_one_task_and_handling_in_another_form_one_trace(
    dispatch_pool: asyncpg.Pool, otel: Otel, dispatch_registry: Registry
) -> None:
    dispatcher = make_dispatcher(dispatch_pool, otel, dispatch_registry)
    tracer = otel.tracer_provider.get_tracer("tests.app")
    published: list[Any] = []

    async def request_handler() -> None:
        with tracer.start_as_current_span("POST /reservations", kind=SpanKind.SERVER):
            async with dispatch_pool.acquire() as conn, conn.transaction():
                published.append(
                    await dispatcher.publish(
                        "credit.locked",
                        locked_payload(),
                        subject=uid("crr"),
                        actor="system:revenue",
                        conn=conn,
                    )
                )

    consumer = Consumer(
        dispatch_pool, name="coaching", telemetry=otel.telemetry, registry=dispatch_registry
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        with tracer.start_as_current_span("update availability"):
            pass

    async with consumer:
        # The consumer's tasks were created before any span existed: the context can
        # only reach its handler through the envelope's traceparent.
        async with anyio.create_task_group() as tg:
            tg.start_soon(request_handler)
        assert (await drain(consumer)).handled == 1
    # A second consumer, started after the request is over, joins the same trace.
    assert (
        await drain(consumer_for_trace(dispatch_pool, otel, dispatch_registry, tracer))
    ).handled == 1
    [envelope] = published

    [server] = otel.spans(SpanKind.SERVER)
    [producer] = otel.spans(SpanKind.PRODUCER)
    consumer_spans = otel.spans(SpanKind.CONSUMER)
    assert len(consumer_spans) == 2  # one per consumer
    handler_spans = [s for s in otel.spans(SpanKind.INTERNAL) if s.name == "update availability"]
    assert len(handler_spans) == 2
    assert server.context is not None
    assert producer.context is not None
    trace_id = server.context.trace_id
    assert producer.parent is not None
    assert producer.parent.span_id == server.context.span_id
    assert envelope.traceparent == (
        f"00-{trace_id:032x}-{producer.context.span_id:016x}-{producer.context.trace_flags:02x}"
    )
    assert producer.context.trace_flags.sampled
    for span in consumer_spans:
        assert span.context is not None
        assert span.context.trace_id == trace_id
        assert span.parent is not None
        assert span.parent.span_id == producer.context.span_id
        [link] = span.links
        assert link.context.span_id == producer.context.span_id
        attributes = span.attributes or {}
        assert attributes["messaging.message.id"] == envelope.event_id
        assert attributes["messaging.destination.name"] == "credit.locked"
        assert attributes["messaging.operation.type"] == "process"
        # The partition of its subject (ADR 0006), as the server computes it.
        assert attributes["messaging.destination.partition.id"] == str(
            await dispatch_pool.fetchval("SELECT dispatcher_partition($1)", envelope.subject)
        )
        assert span.status.status_code is StatusCode.UNSET
    by_id = {s.context.span_id: s for s in consumer_spans if s.context is not None}
    for span in handler_spans:
        assert span.context is not None
        assert span.context.trace_id == trace_id
        assert span.parent is not None
        assert span.parent.span_id in by_id
    groups = {(s.attributes or {})["messaging.consumer.group.name"] for s in consumer_spans}
    assert groups == {"coaching", "analytics"}


def consumer_for_trace(pool: asyncpg.Pool, otel: Otel, registry: Registry, tracer: Any) -> Consumer:
    consumer = Consumer(pool, name="analytics", telemetry=otel.telemetry, registry=registry)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        with tracer.start_as_current_span("update availability"):
            pass

    return consumer


async def test_consumer_lag_gauge_reports_the_backlog(
    dispatch_pool: asyncpg.Pool, otel: Otel, dispatch_registry: Registry
) -> None:
    dispatcher = make_dispatcher(dispatch_pool, otel, dispatch_registry)
    started, release = anyio.Event(), anyio.Event()
    consumer = Consumer(
        dispatch_pool, name="slow", telemetry=otel.telemetry, registry=dispatch_registry
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        started.set()
        await release.wait()

    @consumer.on("credit.reserved")
    async def on_reserved(event: Event) -> None:
        pass

    subject = uid("crr")
    for _ in range(3):
        await dispatcher.publish(
            "credit.locked", locked_payload(), subject=subject, actor="system:revenue"
        )

    def lag() -> dict[str, int]:
        return {
            attrs["event_type"]: point.value
            for attrs, point in otel.metrics()["dispatcher.consumer.lag"]
            if attrs["consumer"] == "slow"
        }

    async with consumer:
        await started.wait()
        # All three were read; the first is blocked, the other two wait behind it.
        assert lag() == {"credit.locked": 3, "credit.reserved": 0}
        # One process holds every partition; its member id tells it from other processes.
        [(attrs, point)] = [
            (attrs, point)
            for attrs, point in otel.metrics()["dispatcher.consumer.partitions"]
            if attrs["consumer"] == "slow"
        ]
        assert point.value == 256
        assert attrs["owner"] == consumer._leases.member_id
        release.set()
        await drain(consumer)
        assert lag() == {"credit.locked": 0, "credit.reserved": 0}
    assert lag() == {}  # a closed consumer stops reporting


class CountingMeterProvider(metrics.MeterProvider):
    """Wraps a MeterProvider and counts the instruments created through it."""

    def __init__(self, inner: metrics.MeterProvider) -> None:
        self.inner = inner
        self.created: collections.Counter[str] = collections.Counter()

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _CountingMeter(self.inner.get_meter(name, *args, **kwargs), self.created)


class _CountingMeter:
    def __init__(self, inner: Any, created: collections.Counter[str]) -> None:
        self._inner = inner
        self._created = created

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not name.startswith("create_"):
            return attribute

        def create(*args: Any, **kwargs: Any) -> Any:
            self._created[name] += 1
            return attribute(*args, **kwargs)

        return create


async def test_no_instrument_is_created_per_call(
    dispatch_pool: asyncpg.Pool, dispatch_registry: Registry
) -> None:
    reader = InMemoryMetricReader()
    provider = CountingMeterProvider(MeterProvider(metric_readers=[reader], shutdown_on_exit=False))
    telemetry = Telemetry(meter_provider=provider)
    at_start = dict(provider.created)
    assert at_start == {
        "create_counter": 8,  # with delivery, inbox and lost-lease counts
        "create_histogram": 3,  # with the delivery latency
        "create_observable_gauge": 2,  # lag, partitions held
    }

    dispatcher = Dispatcher(
        dispatch_pool,
        producer="revenue",
        tenant_id="tnt_tests",
        telemetry=telemetry,
        registry=dispatch_registry,
    )
    for _ in range(50):
        await dispatcher.publish(
            "credit.locked", locked_payload(), subject=uid("crr"), actor="system:revenue"
        )
    await dispatcher.publish_many(
        [
            {
                "event_type": "credit.locked",
                "payload": locked_payload(),
                "subject": uid("crr"),
                "actor": "system:revenue",
            }
            for _ in range(50)
        ]
    )
    for name in ("coaching", "warehouse"):
        consumer = Consumer(
            dispatch_pool,
            name=name,
            telemetry=telemetry,
            registry=dispatch_registry,
            retry_delays=(0,),
        )

        @consumer.on("credit.locked")
        async def on_locked(event: Event) -> None:
            if event.payload["locked_credits"] == 0:
                raise RuntimeError("never")

        assert (await drain(consumer)).handled == 100

    assert dict(provider.created) == at_start
    [(_, published)] = counter([(a, p) for a, p in metrics_of(reader)["dispatcher.publish.count"]])
    assert published == 100


def metrics_of(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    found: dict[str, list[tuple[dict[str, Any], Any]]] = collections.defaultdict(list)
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found[metric.name].append((dict(point.attributes or {}), point))
    return found


async def test_default_telemetry_is_shared(
    dispatch_pool: asyncpg.Pool, dispatch_registry: Registry
) -> None:
    first = Telemetry.default()
    assert Telemetry.default() is first
    dispatcher = Dispatcher(
        dispatch_pool, producer="revenue", tenant_id="tnt_tests", registry=dispatch_registry
    )
    consumer = Consumer(dispatch_pool, name="coaching", registry=dispatch_registry)
    assert dispatcher.telemetry is first
    assert consumer.telemetry is first


def assert_no_ids(found: dict[str, list[tuple[dict[str, Any], Any]]]) -> None:
    for name, points in found.items():
        for attrs, _ in points:
            assert set(attrs) <= ALLOWED_ATTRIBUTES, (name, attrs)
            for value in attrs.values():
                assert not PREFIXED_ID.match(str(value)), (name, attrs)


# -- logging ---------------------------------------------------------------------------


async def test_log_records_carry_structured_extras(
    dispatch_pool: asyncpg.Pool,
    dispatcher: Dispatcher,
    dispatch_registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dispatch_aio")
    consumer = Consumer(
        dispatch_pool, name="fragile", registry=dispatch_registry, retry_delays=(0,)
    )

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        raise LookupError("missing row")

    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("crr"), actor="system:tests"
    )
    await drain(consumer)

    ours = [r for r in caplog.records if r.name.startswith("dispatch_aio")]
    assert {r.name for r in ours} >= {"dispatch_aio.consumer", "dispatch_aio.listener"}
    assert all(getattr(r, "consumer", None) == "fragile" for r in ours)
    failures = [r for r in ours if "handler failed" in r.getMessage()]
    assert [(r.levelno, getattr(r, "attempt", None)) for r in failures] == [
        (logging.WARNING, 1),
        (logging.ERROR, 2),
    ]
    for record in failures:
        assert getattr(record, "event_type", None) == "credit.locked"
        assert getattr(record, "event_id", None) == envelope.event_id
        assert "LookupError" in record.getMessage()


def test_importing_the_package_configures_no_logging() -> None:
    code = """
import logging, pkgutil, importlib
import dispatch_aio
for module in pkgutil.walk_packages(dispatch_aio.__path__, "dispatch_aio."):
    importlib.import_module(module.name)
root = logging.getLogger()
ours = logging.getLogger("dispatch_aio")
assert root.handlers == [], root.handlers
assert root.level == logging.WARNING, root.level
assert ours.handlers == [] and ours.level == logging.NOTSET and ours.propagate
for name, logger in logging.Logger.manager.loggerDict.items():
    if name.startswith("dispatch_aio") and isinstance(logger, logging.Logger):
        assert logger.handlers == [] and logger.level == logging.NOTSET, name
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- end to end: an HTTP request, a publish, a handler ---------------------------------


async def test_fastapi_request_publish_and_handler_share_one_trace(
    dispatch_pool: asyncpg.Pool, otel: Otel, dispatch_registry: Registry
) -> None:
    tracer = otel.tracer_provider.get_tracer("tests.shop")
    dispatcher = make_dispatcher(dispatch_pool, otel, dispatch_registry, producer="shop")
    app = FastAPI()

    @app.middleware("http")
    async def server_span(request: Request, call_next: Any) -> Response:
        # What an HTTP instrumentation does: continue the caller's trace.
        with tracer.start_as_current_span(
            f"{request.method} {request.url.path}",
            context=extract(dict(request.headers)),
            kind=SpanKind.SERVER,
        ):
            response: Response = await call_next(request)
            return response

    @app.post("/payments", status_code=201)
    async def receive_payment(payment: dict[str, Any]) -> dict[str, str]:
        async with dispatch_pool.acquire() as conn, conn.transaction():
            envelope = await dispatcher.publish(
                "payment.received",
                payment,
                subject=payment["person_id"],
                actor="system:shop",
                conn=conn,
            )
        return {"event_id": envelope.event_id}

    consumer = Consumer(
        dispatch_pool, name="ledger", telemetry=otel.telemetry, registry=dispatch_registry
    )

    @consumer.on("payment.received")
    async def on_payment(event: Event, conn: asyncpg.Connection) -> None:
        with tracer.start_as_current_span("book payment"):
            await conn.execute("SELECT 1")

    payment = example("payment.received")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        with tracer.start_as_current_span("checkout", kind=SpanKind.CLIENT) as client_span:
            headers: dict[str, str] = {}
            inject(headers)
            response = await client.post("/payments", json=payment, headers=headers)
    assert response.status_code == 201, response.text
    assert (await drain(consumer)).handled == 1

    trace_id = client_span.get_span_context().trace_id
    [server] = otel.spans(SpanKind.SERVER)
    [producer] = otel.spans(SpanKind.PRODUCER)
    [processing] = otel.spans(SpanKind.CONSUMER)
    [booking] = [s for s in otel.spans(SpanKind.INTERNAL) if s.name == "book payment"]
    chain = [server, producer, processing, booking]
    assert [s.context.trace_id for s in chain if s.context is not None] == [trace_id] * 4
    parents = [client_span.get_span_context().span_id] + [
        s.context.span_id for s in chain[:-1] if s.context is not None
    ]
    assert [s.parent.span_id for s in chain if s.parent is not None] == parents
    assert (processing.attributes or {})["messaging.message.id"] == response.json()["event_id"]
