"""The insert trigger flags events whose subject has an earlier event with a later xid."""

from __future__ import annotations

import asyncpg
import pytest

from dispatch_aio import Dispatcher

from .helpers import locked_payload, uid

pytestmark = pytest.mark.anyio


async def _flag(pool: asyncpg.Pool, event_id: str) -> bool:
    value = await pool.fetchval(
        "SELECT out_of_order FROM dispatcher_event WHERE event_id = $1", event_id
    )
    assert isinstance(value, bool)
    return value


async def test_in_order_publishes_are_not_flagged(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    subject = uid("per")
    first = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=subject, actor="a:b"
    )
    second = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=subject, actor="a:b"
    )
    assert not await _flag(dispatch_pool, first.event_id)
    assert not await _flag(dispatch_pool, second.event_id)


async def test_a_later_commit_with_an_earlier_xid_is_flagged(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    subject = uid("per")
    await dispatch_pool.execute("CREATE TABLE scratch (x int)")
    async with dispatch_pool.acquire() as early, dispatch_pool.acquire() as late:
        early_tx = early.transaction()
        await early_tx.start()
        await early.execute("INSERT INTO scratch VALUES (1)")  # takes its xid now
        async with late.transaction():
            quick = await dispatcher.publish(
                "credit.locked", locked_payload(), subject=subject, actor="a:b", conn=late
            )
        slow = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=subject, actor="a:b", conn=early
        )
        await early_tx.commit()
    assert not await _flag(dispatch_pool, quick.event_id)
    assert await _flag(dispatch_pool, slow.event_id)


async def test_repeatable_read_producers_are_flagged_without_looking(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    async with dispatch_pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        envelope = await dispatcher.publish(
            "credit.locked", locked_payload(), subject=uid("per"), actor="a:b", conn=conn
        )
    assert await _flag(dispatch_pool, envelope.event_id)
