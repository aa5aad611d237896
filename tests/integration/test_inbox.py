"""The inbox: verify, validate, insert once; every hostile request refused without a row."""

from __future__ import annotations

import copy
import importlib.util
import json
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dispatch_aio import Consumer, Event, Registry, Telemetry, generate_secret
from dispatch_aio.inbox import inbox_app, inbox_asgi, serve_inbox
from dispatch_aio.testing import drain

from .delivery_helpers import SECRET, body_of, envelope, event_rows, signed

pytestmark = pytest.mark.anyio

URL = "http://inbox.test/dispatch/inbox"
REGISTRY = Registry.load()


@pytest.fixture(params=["fastapi", "asgi"])
async def client(
    dispatch_pool: asyncpg.Pool, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """The inbox in a FastAPI application, and as the plain ASGI application."""
    build = inbox_app if request.param == "fastapi" else inbox_asgi
    app = build(dispatch_pool, secrets=[SECRET], registry=REGISTRY, max_body_bytes=64 * 1024)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as http:
        yield http


async def test_an_event_is_inserted_with_its_original_identity(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    sent = envelope()
    body = body_of(sent)
    response = await client.post(URL, content=body, headers=signed(body, sent.event_id))
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted", "event_id": sent.event_id}
    [row] = await event_rows(dispatch_pool)
    for column in ("event_id", "event_type", "schema_version", "tenant_id", "producer"):
        assert row[column] == getattr(sent, column)
    assert row["subject"] == sent.subject
    assert row["occurred_at"] == sent.occurred_at
    assert row["traceparent"] == sent.traceparent
    assert row["correlation_id"] == sent.correlation_id
    assert json.loads(row["payload"]) == sent.payload
    assert row["position"] > 0
    assert int(row["xid"]) > 0  # set by the trigger, as for a local publish
    # Checked here against our own schema: consumers need not check it again (ADR 0007).
    assert row["checked_against"] == REGISTRY.payload_digest(sent.event_type, sent.schema_version)


async def test_a_redelivered_event_answers_200_and_writes_no_second_row(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    sent = envelope()
    body = body_of(sent)
    first = await client.post(URL, content=body, headers=signed(body, sent.event_id))
    again = await client.post(URL, content=body, headers=signed(body, sent.event_id))
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["status"] == "duplicate"
    assert len(await event_rows(dispatch_pool)) == 1


async def test_local_consumers_get_received_events_exactly_once(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    await dispatch_pool.execute("CREATE TABLE seen (event_id text NOT NULL)")
    sent = [envelope() for _ in range(5)]
    for item in sent + sent:
        body = body_of(item)
        response = await client.post(URL, content=body, headers=signed(body, item.event_id))
        assert response.status_code == 200
    consumer = Consumer(dispatch_pool, name="coaching", registry=REGISTRY)

    @consumer.on("credit.locked")
    async def record(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO seen VALUES ($1)", event.event_id)

    assert (await drain(consumer)).handled == 5
    seen = await dispatch_pool.fetch("SELECT event_id, count(*) FROM seen GROUP BY 1")
    assert {r["event_id"]: r["count"] for r in seen} == {e.event_id: 1 for e in sent}


@pytest.mark.parametrize(
    "case", ["missing", "wrong secret", "tampered body", "stale", "future", "repeated header"]
)
async def test_signature_failures_answer_401_without_detail(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool, case: str
) -> None:
    sent = envelope()
    body = body_of(sent)
    headers: dict[str, str] | list[tuple[str, str]] = signed(body, sent.event_id)
    assert isinstance(headers, dict)
    if case == "missing":
        del headers["webhook-signature"]
    elif case == "wrong secret":
        headers = signed(body, sent.event_id, secret=generate_secret())
    elif case == "tampered body":
        body = body.replace(b'"locked_credits":2', b'"locked_credits":3')
    elif case == "stale":
        headers = signed(body, sent.event_id, timestamp=int(time.time()) - 360)
    elif case == "future":
        headers = signed(body, sent.event_id, timestamp=int(time.time()) + 360)
    elif case == "repeated header":
        other = signed(body, sent.event_id, secret=generate_secret())
        headers = [*headers.items(), ("webhook-signature", other["webhook-signature"])]
    response = await client.post(URL, content=body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert await event_rows(dispatch_pool) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b'{"a":1,"a":2}',
        b'{"x":NaN}',
        b"\xff\xfe",
        b"[" * 30_000 + b"]" * 30_000,
    ],
)
async def test_a_signed_malformed_body_answers_400(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool, raw: bytes
) -> None:
    response = await client.post(URL, content=raw, headers=signed(raw, "evt_x"))
    assert response.status_code == 400, response.text
    assert await event_rows(dispatch_pool) == []


async def test_an_invalid_envelope_or_payload_answers_422_naming_the_path(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    sent = envelope().to_json_dict()
    cases: list[tuple[dict[str, Any], str]] = []
    bad_payload = copy.deepcopy(sent)
    bad_payload["payload"]["person_id"] = "nobody"
    cases.append((bad_payload, "$.payload.person_id"))
    bad_envelope = copy.deepcopy(sent)
    bad_envelope["occurred_at"] = "yesterday"
    cases.append((bad_envelope, "$.occurred_at"))
    unknown = copy.deepcopy(sent)
    unknown["event_type"] = "credit.vanished"
    cases.append((unknown, "$.event_type"))
    version = copy.deepcopy(sent)
    version["schema_version"] = 9
    cases.append((version, "$.schema_version"))
    cases.append(([sent], "$"))  # type: ignore[list-item]
    for data, path in cases:
        body = body_of(data) if isinstance(data, dict) else json.dumps(data).encode()
        response = await client.post(URL, content=body, headers=signed(body, sent["event_id"]))
        assert response.status_code == 422, (path, response.text)
        assert response.json()["path"] == path
    assert await event_rows(dispatch_pool) == []


async def test_an_event_id_other_than_the_signed_one_answers_422(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    sent, other = envelope(), envelope()
    body = body_of(sent)
    response = await client.post(URL, content=body, headers=signed(body, other.event_id))
    assert response.status_code == 422
    assert response.json()["path"] == "$.event_id"
    assert await event_rows(dispatch_pool) == []


async def test_an_oversized_body_answers_413_before_it_is_read_whole(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    declared = b"x" * (64 * 1024 + 1)
    response = await client.post(URL, content=declared, headers=signed(declared, "evt_big"))
    assert response.status_code == 413
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b"y" * 1024

    response = await client.post(URL, content=chunks(), headers={"webhook-id": "evt_big"})
    assert response.status_code == 413
    assert pulled < 100, "the inbox read on past its limit"
    assert await event_rows(dispatch_pool) == []


async def test_a_database_that_does_not_answer_gives_503(free_tcp_port: int) -> None:
    pool = await asyncpg.create_pool(
        f"postgresql://nobody@127.0.0.1:{free_tcp_port}/none", min_size=0, max_size=1
    )
    try:
        app = inbox_app(pool, secrets=[SECRET], registry=REGISTRY)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
            sent = envelope()
            body = body_of(sent)
            response = await http.post(URL, content=body, headers=signed(body, sent.event_id))
        assert response.status_code == 503
        assert response.headers["retry-after"]
    finally:
        await pool.close()


async def test_the_inbox_continues_the_senders_trace(dispatch_pool: asyncpg.Pool) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    app = inbox_app(dispatch_pool, secrets=[SECRET], registry=REGISTRY, telemetry=telemetry)
    sent = envelope()
    body = body_of(sent)
    headers = signed(body, sent.event_id)
    client_span = "00-11112222333344445555666677778888-aaaabbbbccccdddd-01"
    headers["traceparent"] = client_span
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        assert (await http.post(URL, content=body, headers=headers)).status_code == 200
    [span] = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None
    assert f"{span.context.trace_id:032x}" == "11112222333344445555666677778888"
    assert f"{span.parent.span_id:016x}" == "aaaabbbbccccdddd"
    assert span.attributes is not None
    assert span.attributes["dispatch_aio.inbox.outcome"] == "accepted"
    [row] = await event_rows(dispatch_pool)
    assert row["traceparent"] == sent.traceparent  # the producer's own context, kept


# -- hostile requests ------------------------------------------------------------------


def _mutations(rng: random.Random, count: int) -> list[tuple[str, list[tuple[str, str]], bytes]]:
    """``count`` requests, each a valid signed request with one hostile change."""
    other_secret = generate_secret()
    made: list[tuple[str, list[tuple[str, str]], bytes]] = []
    kinds = [
        "signature byte",
        "body byte",
        "header value case",
        "header order and values swapped",
        "stale timestamp",
        "future timestamp",
        "id",
        "other service's secret",
        "truncated body",
        "appended body",
        "header missing",
        "header renamed",
        "signature version",
        "duplicated header",
        "signature of another event",
    ]
    for index in range(count):
        kind = kinds[index % len(kinds)]
        sent = envelope()
        body = body_of(sent)
        headers = signed(body, sent.event_id)
        signature = headers["webhook-signature"]
        if kind == "signature byte":
            raw = bytearray(signature.encode())
            at = rng.randrange(3, len(raw) - 1)  # keep "v1,", change one base64 character
            alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
            raw[at] = rng.choice([c for c in alphabet if c != raw[at]])
            headers["webhook-signature"] = raw.decode()
        elif kind == "body byte":
            raw = bytearray(body)
            at = rng.randrange(len(raw))
            raw[at] = (raw[at] + rng.randrange(1, 256)) % 256
            body = bytes(raw)
        elif kind == "header value case":
            name = rng.choice(["webhook-id", "webhook-signature"])
            value = headers[name]
            flippable = [i for i, c in enumerate(value) if c.isalpha() and i > 2]
            at = rng.choice(flippable)
            headers[name] = value[:at] + value[at].swapcase() + value[at + 1 :]
        elif kind == "header order and values swapped":
            headers["webhook-id"], headers["webhook-timestamp"] = (
                headers["webhook-timestamp"],
                headers["webhook-id"],
            )
        elif kind == "stale timestamp":
            old = int(time.time()) - rng.randrange(360, 10**7)
            headers = signed(body, sent.event_id, timestamp=old)
        elif kind == "future timestamp":
            ahead = int(time.time()) + rng.randrange(360, 10**7)
            headers = signed(body, sent.event_id, timestamp=ahead)
        elif kind == "id":
            headers["webhook-id"] = envelope().event_id
        elif kind == "other service's secret":
            headers = signed(body, sent.event_id, secret=other_secret)
        elif kind == "truncated body":
            body = body[: rng.randrange(len(body))]
        elif kind == "appended body":
            body = body + rng.choice([b" ", b"\n", b"{}", b"\x00"])
        elif kind == "header missing":
            del headers[rng.choice(["webhook-id", "webhook-timestamp", "webhook-signature"])]
        elif kind == "header renamed":
            name = rng.choice(["webhook-id", "webhook-timestamp", "webhook-signature"])
            headers[name.replace("-", "_")] = headers.pop(name)
        elif kind == "signature version":
            headers["webhook-signature"] = "v1a" + signature[2:]
        elif kind == "duplicated header":
            pairs = [*headers.items(), ("webhook-timestamp", str(int(time.time()) - 10))]
            rng.shuffle(pairs)
            made.append((kind, pairs, body))
            continue
        elif kind == "signature of another event":
            other = envelope()
            headers["webhook-signature"] = signed(body_of(other), other.event_id)[
                "webhook-signature"
            ]
        pairs = list(headers.items())
        rng.shuffle(pairs)  # header order never matters
        made.append((kind, pairs, body))
    return made


async def test_a_thousand_hostile_requests_are_refused_and_write_nothing(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    rng = random.Random(20260509)
    refused: dict[str, set[int]] = {}
    for kind, headers, body in _mutations(rng, 1200):
        response = await client.post(URL, content=body, headers=headers)
        assert response.status_code in (400, 401, 422), (kind, response.status_code, body[:80])
        refused.setdefault(kind, set()).add(response.status_code)
    assert len(refused) == 15
    assert refused["other service's secret"] == {401}
    assert await event_rows(dispatch_pool) == []
    # The control: the same generator's request without its mutation is accepted.
    sent = envelope()
    body = body_of(sent)
    response = await client.post(URL, content=body, headers=signed(body, sent.event_id))
    assert response.status_code == 200
    assert len(await event_rows(dispatch_pool)) == 1


async def test_u0000_in_a_signed_event_answers_422_and_its_escaped_spelling_is_stored(
    dispatch_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    from dispatch_aio import Inbox

    from .test_publish import _blob_contracts

    blobs = Registry.load(_blob_contracts(tmp_path / "contracts", REGISTRY.root))
    inbox = Inbox(dispatch_pool, secrets=[SECRET], registry=blobs)
    answers = {}
    for label, text in (("nul", "a \u0000 b"), ("written", "a \\u0000 written out")):
        data = envelope().to_json_dict()
        data.update(event_type="blob.stored", schema_version=1, payload={"body": text})
        body = body_of(data)
        answers[label] = await inbox.receive(signed(body, data["event_id"]), body)
    assert (answers["nul"].status, answers["nul"].body["path"]) == (422, "$")
    assert answers["written"].status == 200
    [row] = await event_rows(dispatch_pool)
    assert json.loads(row["payload"]) == {"body": "a \\u0000 written out"}


async def test_a_client_gone_mid_body_gets_no_answer_and_writes_nothing(
    dispatch_pool: asyncpg.Pool,
) -> None:
    sent = envelope()
    body = body_of(sent)
    headers = [(k.encode(), v.encode()) for k, v in signed(body, sent.event_id).items()]
    messages = iter(
        [
            {"type": "http.request", "body": body[:10], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    answered: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        answered.append(message)

    app = inbox_asgi(dispatch_pool, secrets=[SECRET], registry=REGISTRY)
    scope = {"type": "http", "method": "POST", "path": "/dispatch/inbox", "headers": headers}
    await app(scope, receive, send)
    assert answered == []
    assert await event_rows(dispatch_pool) == []


async def test_serve_inbox_says_which_http_parser_uvicorn_runs(dispatch_dsn: str) -> None:
    # uvicorn takes httptools when it is importable, h11 otherwise: benchmark figures
    # depend on which, so the running service reports it.
    expected = "httptools" if importlib.util.find_spec("httptools") else "h11"
    async with serve_inbox(dispatch_dsn, secrets=[SECRET], registry=REGISTRY) as service:
        assert service.http_parser == expected
        sent = envelope()
        body = body_of(sent)
        async with httpx.AsyncClient() as http:
            response = await http.post(
                service.url, content=body, headers=signed(body, sent.event_id)
            )
        assert response.status_code == 200, response.text
        assert [row["event_id"] for row in await event_rows(service.pool)] == [sent.event_id]


async def test_the_payload_is_stored_as_signed_not_encoded_again(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    # 20.000 is an integer to JSON Schema; Python would read it as 20.0 and write it
    # back so. The stored payload is the one the sender signed, decimals and all.
    sent = envelope()
    body = body_of(sent).replace(b'"locked_credits":2', b'"locked_credits":20.000')
    response = await client.post(URL, content=body, headers=signed(body, sent.event_id))
    assert response.status_code == 200, response.text
    stored = await dispatch_pool.fetchval(
        "SELECT payload ->> 'locked_credits' FROM dispatcher_event WHERE event_id = $1",
        sent.event_id,
    )
    assert stored == "20.000"


@pytest.mark.parametrize("tracing", [False, True], ids=["untraced", "traced"])
async def test_the_inbox_counts_each_outcome_with_tracing_on_or_off(
    dispatch_pool: asyncpg.Pool, tracing: bool
) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=TracerProvider() if tracing else trace.NoOpTracerProvider(),
    )
    assert telemetry.tracing_enabled() is tracing
    app = inbox_asgi(dispatch_pool, secrets=[SECRET], registry=REGISTRY, telemetry=telemetry)
    sent = envelope()
    body = body_of(sent)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        for headers in (signed(body, sent.event_id),) * 2 + ({},):
            await http.post(URL, content=body, headers=headers)
    counted = {
        dict(point.attributes)["outcome"]: point.value
        for metric in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
        if metric.name == "dispatcher.inbox.count"
        for point in metric.data.data_points
    }
    assert counted == {"accepted": 1, "duplicate": 1, "unauthorized": 1}


@pytest.mark.parametrize(
    ("spelled", "stored"),
    [
        ("2026-05-09T19:00:00Z", datetime(2026, 5, 9, 19, tzinfo=UTC)),
        ("2026-05-09T19:00:00.5Z", datetime(2026, 5, 9, 19, 0, 0, 500000, tzinfo=UTC)),
        # Beyond microseconds the digits are cut, not rounded (as pydantic reads them).
        ("2024-02-29T23:59:59.999999999Z", datetime(2024, 2, 29, 23, 59, 59, 999999, UTC)),
    ],
)
async def test_occurred_at_is_stored_as_the_sender_spelled_it(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool, spelled: str, stored: datetime
) -> None:
    sent = envelope()
    data = sent.to_json_dict()
    data["occurred_at"] = spelled
    body = body_of(data)
    response = await client.post(URL, content=body, headers=signed(body, sent.event_id))
    assert response.status_code == 200, response.text
    [row] = await event_rows(dispatch_pool)
    assert row["occurred_at"] == stored
