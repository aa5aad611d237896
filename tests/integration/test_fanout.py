"""Fan-out: each subscriber endpoint gets every event, signed, with the outcome its answer
deserves; the SSRF guard holds at connection time; one endpoint down delays no other."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dispatch_aio import Dispatcher, FanoutConfig, Registry, Telemetry, WebhookSecrets
from dispatch_aio.fanout import Fanout
from dispatch_aio.pytest_plugin import TestPostgres
from dispatch_aio.testing import drain, drain_fanout

from .delivery_helpers import (
    SECRET,
    ScriptedSubscriber,
    event_rows,
    extra_database,
    fanout_config,
    free_port,
    inbox_process,
    serve_in_process,
)
from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio

REGISTRY = Registry.load()


async def publish(dispatcher: Dispatcher, count: int, subjects: int = 5) -> list[str]:
    people = [uid("per") for _ in range(subjects)]
    envelopes = await dispatcher.publish_many(
        [
            {
                "event_type": "credit.locked",
                "payload": locked_payload(),
                "subject": people[i % subjects],
                "actor": "system:revenue",
            }
            for i in range(count)
        ]
    )
    return [e.event_id for e in envelopes]


def fanout(pool: asyncpg.Pool, endpoints: dict[str, str], **options: Any) -> Fanout:
    config = FanoutConfig.from_mapping(fanout_config(endpoints, **options))
    return Fanout(pool, config, registry=REGISTRY, consumer_options={"retry_jitter": 0.0})


async def dead_letters(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT consumer, event_id, error_type, error_message, attempts"
        " FROM dispatcher_dead_letter ORDER BY created_at"
    )


async def test_events_reach_a_real_inbox_once_each_with_their_identity(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_postgres: TestPostgres
) -> None:
    async with (
        extra_database(dispatch_postgres) as receiver_dsn,
        inbox_process(receiver_dsn) as inbox,
    ):
        sent = await publish(dispatcher, 40)
        reader = InMemoryMetricReader()
        config = FanoutConfig.from_mapping(fanout_config({"coaching": inbox.url}))
        telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
        worker = Fanout(dispatch_pool, config, registry=REGISTRY, telemetry=telemetry)
        results = await drain_fanout(worker)
        assert results["coaching"].handled == 40
        receiver = await asyncpg.connect(receiver_dsn)
        try:
            rows = await event_rows(receiver)
        finally:
            await receiver.close()
    assert sorted(r["event_id"] for r in rows) == sorted(sent)
    originals = {r["event_id"]: r for r in await event_rows(dispatch_pool)}
    for row in rows:
        original = originals[row["event_id"]]
        for column in ("producer", "tenant_id", "subject", "occurred_at", "payload", "actor"):
            assert row[column] == original[column], column
    counted = {
        (dict(point.attributes)["endpoint"], dict(point.attributes)["outcome"]): point.value
        for metric in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
        if metric.name == "dispatcher.delivery.count"
        for point in metric.data.data_points
    }
    assert counted == {("coaching", "delivered"): 40}


async def test_each_post_is_signed_and_carries_the_trace(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    traced = Dispatcher(
        dispatch_pool, producer="revenue", tenant_id="tnt_sguild", telemetry=telemetry
    )
    envelope = await traced.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:revenue"
    )
    assert envelope.traceparent is not None
    subscriber = ScriptedSubscriber()
    async with serve_in_process(subscriber) as port:
        subscriber.port = port
        config = FanoutConfig.from_mapping(fanout_config({"coaching": subscriber.url}))
        await drain_fanout(Fanout(dispatch_pool, config, registry=REGISTRY, telemetry=telemetry))
    [headers] = subscriber.headers
    [received] = subscriber.received
    assert received == envelope.to_json_dict()
    [raw] = subscriber.bodies
    assert WebhookSecrets([SECRET]).verify(headers, raw, now=time.time()) == envelope.event_id
    trace_id = envelope.traceparent.split("-")[1]
    assert headers["traceparent"].split("-")[1] == trace_id
    client = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(client) == 1
    assert f"{client[0].context.span_id:016x}" == headers["traceparent"].split("-")[2]
    assert client[0].attributes is not None
    assert client[0].attributes["http.response.status_code"] == 200


async def test_without_tracing_each_post_passes_the_events_own_trace_on(
    dispatch_pool: asyncpg.Pool,
) -> None:
    provider = TracerProvider()
    traced = Dispatcher(
        dispatch_pool,
        producer="revenue",
        tenant_id="tnt_sguild",
        telemetry=Telemetry(tracer_provider=provider),
    )
    envelope = await traced.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:revenue"
    )
    assert envelope.traceparent is not None
    untraced = Telemetry(tracer_provider=trace.NoOpTracerProvider())
    assert not untraced.tracing_enabled()
    subscriber = ScriptedSubscriber()
    async with serve_in_process(subscriber) as port:
        subscriber.port = port
        config = FanoutConfig.from_mapping(fanout_config({"coaching": subscriber.url}))
        await drain_fanout(Fanout(dispatch_pool, config, registry=REGISTRY, telemetry=untraced))
    [headers] = subscriber.headers
    assert headers["traceparent"] == envelope.traceparent
    [received] = subscriber.received
    assert received == envelope.to_json_dict()
    [raw] = subscriber.bodies
    assert WebhookSecrets([SECRET]).verify(headers, raw, now=time.time()) == envelope.event_id


async def test_posts_reuse_their_keep_alive_connection(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await publish(dispatcher, 30)
    subscriber = ScriptedSubscriber()
    async with serve_in_process(subscriber) as port:
        subscriber.port = port
        worker = fanout(dispatch_pool, {"coaching": subscriber.url}, concurrency=1)
        results = await drain_fanout(worker)
    assert results["coaching"].handled == 30
    # One worker, answers read to their end: every POST goes over the same connection.
    assert len(set(subscriber.clients)) == 1, subscriber.clients


async def test_server_errors_and_connection_errors_are_retried(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    [event_id] = await publish(dispatcher, 1)
    subscriber = ScriptedSubscriber(answers=[(500, {}), (502, {})])
    async with serve_in_process(subscriber) as port:
        subscriber.port = port
        results = await drain_fanout(fanout(dispatch_pool, {"coaching": subscriber.url}))
    assert results["coaching"].retried == 2
    assert results["coaching"].handled == 1
    assert [r["event_id"] for r in subscriber.received] == [event_id] * 3

    [other] = await publish(dispatcher, 1)
    nobody = f"http://127.0.0.1:{free_port()}/inbox"
    results = await drain_fanout(fanout(dispatch_pool, {"delivery": nobody}))
    assert results["delivery"].dead_lettered == 2  # both events: delivery never had them
    letters = await dead_letters(dispatch_pool)
    assert {r["event_id"] for r in letters} == {event_id, other}
    assert all(r["attempts"] == 4 and r["consumer"] == "fanout.delivery" for r in letters)
    assert all(r["error_type"] == "ConnectError" for r in letters)


async def test_410_gone_dead_letters_at_once_with_the_reason(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    [event_id] = await publish(dispatcher, 1)
    subscriber = ScriptedSubscriber(answers=[(410, {})] * 10)
    async with serve_in_process(subscriber) as port:
        subscriber.port = port
        await drain_fanout(fanout(dispatch_pool, {"coaching": subscriber.url}))
    [letter] = await dead_letters(dispatch_pool)
    assert letter["event_id"] == event_id
    assert "gone (HTTP 410)" in letter["error_message"]
    assert letter["attempts"] == 1
    assert len(subscriber.received) == 1


async def test_other_4xx_dead_letters_without_retries(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    [event_id] = await publish(dispatcher, 1)
    subscriber = ScriptedSubscriber(answers=[(422, {})] * 10)
    async with serve_in_process(subscriber) as port:
        subscriber.port = port
        await drain_fanout(fanout(dispatch_pool, {"coaching": subscriber.url}))
    [letter] = await dead_letters(dispatch_pool)
    assert letter["event_id"] == event_id
    assert "refused the event (HTTP 422)" in letter["error_message"]
    assert letter["attempts"] == 1
    assert len(subscriber.received) == 1


async def test_429_waits_at_least_the_retry_after_it_asks_for(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    await publish(dispatcher, 1)
    subscriber = ScriptedSubscriber(answers=[(429, {"retry-after": "2"})])
    arrivals: list[float] = []
    original = subscriber.__call__

    async def timed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            arrivals.append(time.monotonic())
        await original(scope, receive, send)

    async with serve_in_process(timed) as port:
        subscriber.port = port
        results = await drain_fanout(fanout(dispatch_pool, {"coaching": subscriber.url}))
    assert results["coaching"].handled == 1
    assert len(arrivals) == 2
    # A lower bound only: the consumer's own delay here is 0.05 s.
    assert arrivals[1] - arrivals[0] >= 2.0


async def test_the_guard_refuses_a_name_that_resolves_to_loopback_at_connection_time(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    [event_id] = await publish(dispatcher, 1)
    subscriber = ScriptedSubscriber()
    lookups: list[str] = []

    async def changed_dns(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]  # the name pointed elsewhere when the config loaded

    async with serve_in_process(subscriber) as port:
        url = f"http://subscriber.invalid:{port}/inbox"
        config = FanoutConfig.from_mapping(
            fanout_config({"coaching": url}, allow_private_network=False)
        )
        config.check_addresses()  # passes: the name does not resolve at load
        worker = Fanout(
            dispatch_pool,
            config,
            registry=REGISTRY,
            resolve=changed_dns,
            consumer_options={"retry_jitter": 0.0},
        )
        results = await drain_fanout(worker)
        assert results["coaching"].dead_lettered == 1
        assert subscriber.received == []
        [letter] = await dead_letters(dispatch_pool)
        assert letter["event_id"] == event_id
        assert letter["error_type"] == "UnsafeEndpointError"
        assert "loopback" in letter["error_message"]
        assert lookups == ["subscriber.invalid"] * 4

        # The control: allowed explicitly, the same resolution connects to the checked address.
        await dispatch_pool.execute("DELETE FROM dispatcher_dead_letter")
        await dispatch_pool.execute("DELETE FROM dispatcher_dedup")
        await dispatch_pool.execute("DELETE FROM dispatcher_cursor")
        allowed = FanoutConfig.from_mapping(fanout_config({"coaching": url}))
        worker = Fanout(dispatch_pool, allowed, registry=REGISTRY, resolve=changed_dns)
        assert (await drain_fanout(worker))["coaching"].handled == 1
        assert [r["event_id"] for r in subscriber.received] == [event_id]


async def test_a_subscriber_down_for_a_while_gets_everything_and_delays_no_other(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    down_port = free_port()
    healthy, returning = ScriptedSubscriber(), ScriptedSubscriber(port=down_port)
    sent = await publish(dispatcher, 30, subjects=6)
    async with serve_in_process(healthy) as port:
        healthy.port = port
        worker = fanout(
            dispatch_pool,
            {"coaching": healthy.url, "delivery": returning.url},
            # Scaled down: enough short retries to outlast the outage without a dead letter.
            retry_delays=[0.05] * 400,
        )
        async with worker:
            # The healthy subscriber is drained to the end while the other is down...
            await drain(worker.consumers["coaching"])
            assert worker.consumers["coaching"].stats.handled == 30
            assert sorted(r["event_id"] for r in healthy.received) == sorted(sent)
            assert returning.received == []
            # ...and stays down a while: many failed attempts, no dead letter.
            await eventually(
                lambda: worker.consumers["delivery"].stats.retried >= 20,
                within=30,
                what="the down subscriber's retries",
            )
            async with serve_in_process(returning, port=down_port):
                await drain(worker.consumers["delivery"])
            assert worker.consumers["delivery"].stats.handled == 30
    assert await dead_letters(dispatch_pool) == []
    received = [r["event_id"] for r in returning.received]
    assert sorted(set(received)) == sorted(sent)
    # Per subject, the returning subscriber got its events in publish order.
    order = {event_id: index for index, event_id in enumerate(sent)}
    by_subject: dict[str, list[int]] = {}
    for item in returning.received:
        by_subject.setdefault(item["subject"], []).append(order[item["event_id"]])
    for positions in by_subject.values():
        firsts = list(dict.fromkeys(positions))
        assert firsts == sorted(firsts)
