"""Rows a consumer cannot represent, and the log line of every dead letter (items 10, 11)."""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg
import pytest

from dispatch_aio import Consumer, ConsumerState, Dispatcher, Event

from .helpers import locked_payload, uid

pytestmark = pytest.mark.anyio

RAW_INSERT = """
INSERT INTO dispatcher_event (
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, payload, xid, position
) VALUES ($1, 'credit.locked', 1, 'tnt_tests', 'other-language', $2, 'system:tests',
          $3::text::timestamptz, $4::jsonb, '0', 0)
"""


async def test_occurred_at_python_cannot_represent_makes_a_dead_letter_not_a_stall(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {uid("evt"): value for value in ("10000-01-01", "-infinity", "0044-03-15 BC")}
    for event_id, value in bad.items():
        await dispatch_pool.execute(
            RAW_INSERT, event_id, uid("per"), value, json.dumps(locked_payload())
        )
    calls: list[str] = []
    consumer = Consumer(dispatch_pool, name="defensive", poll_interval=0.05)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        calls.append(event.event_id)

    with caplog.at_level(logging.WARNING, logger="dispatch_aio"):
        async with consumer:
            await asyncio.wait_for(consumer.wait_idle(), 10)
            good = (
                await dispatcher.publish(
                    "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
                )
            ).event_id
            await asyncio.wait_for(consumer.wait_idle(), 10)
            assert consumer.state is ConsumerState.RUNNING
    assert calls == [good]
    letters = {
        r["event_id"]: r
        for r in await dispatch_pool.fetch(
            "SELECT * FROM dispatcher_dead_letter WHERE consumer = 'defensive'"
        )
    }
    assert set(letters) == set(bad)
    for event_id, letter in letters.items():
        assert letter["error_type"] == "UndecodableEventError", letter["error_message"]
        assert letter["attempts"] == 0
        assert json.loads(letter["envelope"])["event_id"] == event_id
    # One WARNING per dead letter, naming the consumer, event id, type and reason.
    lines = [r for r in caplog.records if r.getMessage().startswith("dead-lettered")]
    assert len(lines) == len(bad)
    for record in lines:
        assert record.levelno == logging.WARNING
        assert record.consumer == "defensive"  # type: ignore[attr-defined]
        assert record.event_id in bad  # type: ignore[attr-defined]
        assert record.event_id in record.getMessage()  # type: ignore[attr-defined]
        assert "credit.locked" in record.getMessage()
        assert "UndecodableEventError" in record.getMessage()
