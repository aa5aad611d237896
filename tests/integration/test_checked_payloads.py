"""A payload is checked once (ADR 0007): publish stores the digest of the schema it
checked against; a consumer checks again exactly the rows without its own digest."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio import Consumer, Dispatcher, Event, Registry
from dispatch_aio._resources import bundled_contracts_dir

from .helpers import locked_payload, uid

pytestmark = pytest.mark.anyio

REGISTRY = Registry.load()
DIGEST = REGISTRY.payload_digest("credit.locked", 1)
LOCKED = "credit-reservation-lock/schema/payloads/credit.locked-v1.json"

RAW_INSERT = """
INSERT INTO dispatcher_event (
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, payload, checked_against, xid, position
) VALUES ($1, 'credit.locked', 1, 'tnt_tests', 'by-hand', $2, 'system:tests',
          now(), $3::jsonb, $4, '0', 0)
"""
#: Refused by the schema of credit.locked v1 (locked_credits must be at least 1).
REFUSED = locked_payload(locked_credits=0)


async def _insert(pool: asyncpg.Pool, payload: object, checked_against: int | None) -> str:
    event_id = uid("evt")
    await pool.execute(RAW_INSERT, event_id, uid("per"), json.dumps(payload), checked_against)
    return event_id


async def _consume(pool: asyncpg.Pool, name: str, registry: Registry = REGISTRY) -> list[str]:
    """Run consumer ``name`` until idle; the event ids its handler was given."""
    handled: list[str] = []
    consumer = Consumer(pool, name=name, poll_interval=0.05, registry=registry)

    @consumer.on("credit.locked")
    async def on_locked(event: Event) -> None:
        handled.append(event.event_id)

    async with consumer:
        await asyncio.wait_for(consumer.wait_idle(), 10)
    return handled


async def _dead_letters(pool: asyncpg.Pool, name: str) -> dict[str, tuple[str, int]]:
    rows = await pool.fetch(
        "SELECT event_id, error_type, attempts FROM dispatcher_dead_letter WHERE consumer = $1",
        name,
    )
    return {r["event_id"]: (r["error_type"], r["attempts"]) for r in rows}


async def test_publish_stores_the_digest_of_the_schema_it_checked_against(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    one = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    released = REGISTRY.example_payload("credit.released", 2)
    many = await dispatcher.publish_many(
        [
            {"event_type": "credit.locked", "payload": locked_payload(), "subject": uid("per"),
             "actor": "system:tests"},
            {"event_type": "credit.released", "schema_version": 2, "payload": released,
             "subject": uid("per"), "actor": "system:tests"},
        ]
    )  # fmt: skip
    rows = await dispatch_pool.fetch(
        "SELECT event_type, schema_version, checked_against FROM dispatcher_event"
        " WHERE event_id = ANY($1::text[]) ORDER BY position",
        [one.event_id, *(e.event_id for e in many)],
    )
    assert [(r["event_type"], r["checked_against"]) for r in rows] == [
        ("credit.locked", DIGEST),
        ("credit.locked", DIGEST),
        ("credit.released", REGISTRY.payload_digest("credit.released", 2)),
    ]


async def test_a_consumer_checks_every_row_that_lacks_its_own_digest(
    dispatch_pool: asyncpg.Pool,
) -> None:
    unchecked = await _insert(dispatch_pool, REFUSED, None)
    other_schema = await _insert(dispatch_pool, REFUSED, DIGEST ^ 1)
    other_type = await _insert(
        dispatch_pool, REFUSED, REGISTRY.payload_digest("credit.released", 1)
    )
    valid_unchecked = await _insert(dispatch_pool, locked_payload(), None)
    # Whoever writes our digest by hand vouches for the payload as publish would: it is
    # not checked again (ADR 0007 draws the line there).
    vouched = await _insert(dispatch_pool, REFUSED, DIGEST)
    handled = await _consume(dispatch_pool, "checks-by-digest")
    assert sorted(handled) == sorted([valid_unchecked, vouched])
    assert await _dead_letters(dispatch_pool, "checks-by-digest") == {
        event_id: ("InvalidPayloadError", 0) for event_id in (unchecked, other_schema, other_type)
    }


async def test_an_update_of_what_was_checked_clears_the_digest(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    published = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    await dispatch_pool.execute(
        "UPDATE dispatcher_event SET payload = $2::jsonb WHERE event_id = $1",
        published.event_id,
        json.dumps(REFUSED),
    )
    # Setting the digest again, with the payload or alone, does not bring it back.
    await dispatch_pool.execute(
        "UPDATE dispatcher_event SET payload = payload, checked_against = $2 WHERE event_id = $1",
        published.event_id,
        DIGEST,
    )
    by_hand = await _insert(dispatch_pool, REFUSED, None)
    await dispatch_pool.execute(
        "UPDATE dispatcher_event SET checked_against = $2 WHERE event_id = $1", by_hand, DIGEST
    )
    # An update of other columns keeps it.
    kept = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    await dispatch_pool.execute(
        "UPDATE dispatcher_event SET actor = 'system:other' WHERE event_id = $1", kept.event_id
    )
    digests = dict(
        await dispatch_pool.fetch(
            "SELECT event_id, checked_against FROM dispatcher_event"
            " WHERE event_id = ANY($1::text[])",
            [published.event_id, by_hand, kept.event_id],
        )
    )
    assert digests == {published.event_id: None, by_hand: None, kept.event_id: DIGEST}
    assert await _consume(dispatch_pool, "checks-updated") == [kept.event_id]
    assert set(await _dead_letters(dispatch_pool, "checks-updated")) == {
        published.event_id,
        by_hand,
    }


async def test_a_consumer_whose_schema_differs_checks_what_publish_checked(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, tmp_path: Path
) -> None:
    # The consumer's contracts say credit.locked v1 locks at most 3 credits; the
    # publisher's have no bound. Same type and version, another schema: checked again.
    root = tmp_path / "contracts"
    shutil.copytree(bundled_contracts_dir(), root)
    schema = json.loads((root / LOCKED).read_text())
    schema["properties"]["locked_credits"]["maximum"] = 3
    (root / LOCKED).write_text(json.dumps(schema))
    stricter = Registry.load(root)
    assert stricter.payload_digest("credit.locked", 1) != DIGEST
    within = await dispatcher.publish(
        "credit.locked", locked_payload(locked_credits=3), subject=uid("per"), actor="system:t"
    )
    beyond = await dispatcher.publish(
        "credit.locked", locked_payload(locked_credits=4), subject=uid("per"), actor="system:t"
    )
    assert await _consume(dispatch_pool, "checks-stricter", stricter) == [within.event_id]
    assert await _dead_letters(dispatch_pool, "checks-stricter") == {
        beyond.event_id: ("InvalidPayloadError", 0)
    }
    # A consumer with the publisher's contracts takes both, unchecked.
    assert await _consume(dispatch_pool, "checks-same") == [within.event_id, beyond.event_id]
