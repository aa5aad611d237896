"""The demo scenario, in-process against the test PostgreSQL: every check passes."""

from __future__ import annotations

import io

import asyncpg
import pytest

from dispatch_aio import DatabaseUnavailableError
from dispatch_aio.demo import run_demo
from dispatch_aio.demo.domain import COACHING, WAREHOUSE

pytestmark = pytest.mark.anyio


async def _schemas(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dispatch_demo_%'"
        )
    finally:
        await conn.close()
    return [r["nspname"] for r in rows]


async def test_demo_runs_to_a_passing_summary_and_drops_its_schema(dispatch_dsn: str) -> None:
    out = io.StringIO()
    summary = await run_demo(dispatch_dsn, events=60, out=out, seed=7)
    # On failure, the demo's own report (every figure and verdict) goes to the log too.
    report = f"\n--- the demo printed ---\n{out.getvalue()}"

    assert summary.db_schema.startswith("dispatch_demo_")
    assert not summary.embedded
    assert summary.dsn is None
    assert summary.events_published == 60
    assert sum(summary.published_by_type.values()) == 60
    assert summary.transactions_rolled_back >= 1
    assert summary.rolled_back_events_visible == 0
    assert summary.outbox_ok, report
    assert summary.projection_ok, report
    assert summary.projection_mismatches == 0
    assert summary.projection_rows == summary.reservations > 0
    assert summary.warehouse.ok, (
        "the warehouse's committed loads do not match the committed events:\n  "
        + "\n  ".join(summary.warehouse.problems())
        + report
    )

    consumers = {c.name: c for c in summary.consumers}
    assert set(consumers) == {COACHING, WAREHOUSE}
    coaching, warehouse = consumers[COACHING], consumers[WAREHOUSE]
    # Coaching does not subscribe to credit.consumed.
    assert coaching.expected == 60 - summary.published_by_type.get("credit.consumed", 0)
    assert coaching.handled == coaching.expected
    assert coaching.workers == 2
    assert coaching.dead_lettered == 0
    assert warehouse.expected == 60
    assert warehouse.handled + warehouse.replayed == 60, report
    assert warehouse.dead_lettered == warehouse.replayed == len(summary.dead_letters) == 3
    assert warehouse.retried == 2 * 3  # two retries each before the dead letter
    for consumer in summary.consumers:
        assert consumer.complete, report
        assert consumer.latency_p50_ms is not None
        assert consumer.latency_p99_ms is not None
        assert 0 <= consumer.latency_p50_ms <= consumer.latency_p99_ms

    for letter in summary.dead_letters:
        assert letter.consumer == WAREHOUSE
        assert letter.attempts == 3
        assert letter.error.startswith("WarehouseLoadError")
        assert letter.action == "replayed"
        assert letter.replay_status == "succeeded"
        assert letter.resolved_by == "demo:operator"
        assert letter.handled_after_fix == 1, report
    assert summary.latency_p50_ms is not None
    assert summary.latency_p99_ms is not None

    # The second service got every event through its inbox once, and refused forgeries.
    cross = summary.cross_service
    assert cross is not None
    assert cross.subscriber == "delivery"
    assert cross.expected == cross.received == cross.handled == 60
    assert cross.received_more_than_once == cross.handled_more_than_once == 0
    assert cross.forged == cross.refused == 5
    assert cross.forged_written == 0
    assert summary.unexpected_warnings == ()  # the refusals are expected ones
    assert summary.ok, report

    text = out.getvalue()
    assert (
        "Cross-service: delivery's inbox received 60 of 60 events, 0 more than once; "
        "its consumer handled 60, 0 more than once [OK]"
    ) in text
    assert "Forged requests refused: 5 of 5 (bad signatures, 401), 0 written [OK]" in text
    assert "Summary" in text
    assert "p50" in text
    assert "p99" in text
    for letter in summary.dead_letters:
        assert letter.dead_letter_id in text
    assert "All checks passed." in text
    assert "Traceback" not in text

    # The schemas are gone, and the database's own dispatcher tables were not touched.
    assert summary.db_schema not in await _schemas(dispatch_dsn)
    assert cross.schema_name not in await _schemas(dispatch_dsn)
    conn = await asyncpg.connect(dispatch_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM public.dispatcher_event") == 0
    finally:
        await conn.close()


async def test_demo_keep_leaves_the_schema(dispatch_dsn: str) -> None:
    out = io.StringIO()
    summary = await run_demo(dispatch_dsn, events=10, keep=True, out=out, rate=0)
    assert summary.kept
    assert summary.ok
    assert summary.dead_letters == ()  # too few events to pick failing ones
    assert summary.db_schema in await _schemas(dispatch_dsn)
    assert f"Kept schema {summary.db_schema}" in out.getvalue()
    conn = await asyncpg.connect(dispatch_dsn)
    try:
        count = await conn.fetchval(f'SELECT count(*) FROM "{summary.db_schema}".dispatcher_event')
        assert count == 10
    finally:
        await conn.close()


async def test_demo_against_a_dsn_that_does_not_answer() -> None:
    out = io.StringIO()
    with pytest.raises(DatabaseUnavailableError, match=r"cannot reach the database at .*\*\*\*"):
        await run_demo("postgresql://demo:secret@127.0.0.1:1/postgres", events=5, out=out)
    assert "secret" not in out.getvalue()
