"""The inbox's group commit: requests arriving together share one transaction, each is
answered only after it, and a row that fails alone fails only its own request."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from dispatch_aio import Inbox, Registry

from .delivery_helpers import SECRET, body_of, envelope, event_rows, signed

pytestmark = pytest.mark.anyio

REGISTRY = Registry.load()

POISON = """
CREATE FUNCTION poison_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.correlation_id = 'cor_poison' THEN
        RAISE EXCEPTION 'this row cannot be stored';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER poison_row BEFORE INSERT ON dispatcher_event
    FOR EACH ROW EXECUTE FUNCTION poison_row();
"""


def inbox(pool: asyncpg.Pool) -> Inbox:
    return Inbox(pool, secrets=[SECRET], registry=REGISTRY)


async def send_together(receiver: Inbox, bodies: list[tuple[bytes, str]]) -> list[int]:
    answers = await asyncio.gather(
        *(receiver.receive(signed(body, event_id), body) for body, event_id in bodies)
    )
    return [answer.status for answer in answers]


async def test_requests_arriving_together_share_one_commit(dispatch_pool: asyncpg.Pool) -> None:
    sent = [envelope() for _ in range(20)]
    statuses = await send_together(inbox(dispatch_pool), [(body_of(e), e.event_id) for e in sent])
    assert statuses == [200] * 20
    rows = await event_rows(dispatch_pool)
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in sent)
    # Queued while the first flush had not started: all in one transaction.
    assert len({r["xid"] for r in rows}) == 1


async def test_a_redelivery_in_the_same_batch_writes_one_row(
    dispatch_pool: asyncpg.Pool,
) -> None:
    receiver = inbox(dispatch_pool)
    sent, other = envelope(), envelope()
    body = body_of(sent)
    answers = await asyncio.gather(
        receiver.receive(signed(body, sent.event_id), body),
        receiver.receive(signed(body_of(other), other.event_id), body_of(other)),
        receiver.receive(signed(body, sent.event_id), body),
    )
    assert [a.status for a in answers] == [200, 200, 200]
    assert [a.outcome for a in answers] == ["accepted", "accepted", "duplicate"]
    assert len(await event_rows(dispatch_pool)) == 2


async def test_a_row_that_fails_alone_fails_only_its_request(
    dispatch_pool: asyncpg.Pool,
) -> None:
    await dispatch_pool.execute(POISON)
    good = [envelope() for _ in range(5)]
    bad = envelope().model_copy(update={"correlation_id": "cor_poison"})
    batch = [(body_of(e), e.event_id) for e in good[:2]]
    batch += [(body_of(bad), bad.event_id)]
    batch += [(body_of(e), e.event_id) for e in good[2:]]
    statuses = await send_together(inbox(dispatch_pool), batch)
    assert statuses == [200, 200, 500, 200, 200, 200]
    rows = await event_rows(dispatch_pool)
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in good)


async def test_a_caller_cancelled_while_waiting_leaves_its_batch_whole(
    dispatch_pool: asyncpg.Pool,
) -> None:
    receiver = inbox(dispatch_pool)
    sent = [envelope() for _ in range(6)]
    bodies = [(body_of(e), e.event_id) for e in sent]
    tasks = [
        asyncio.create_task(receiver.receive(signed(body, event_id), body))
        for body, event_id in bodies
    ]
    # One turn of the loop: each request runs up to its wait for the writer (nothing
    # before it suspends), so all six rows are queued. Then one caller is cancelled.
    await asyncio.sleep(0)
    assert receiver._writer._flushing is not None
    tasks[3].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert [d.status for i, d in enumerate(done) if i != 3] == [200] * 5  # type: ignore[union-attr]
    # The cancelled request's row may or may not have gone in; its redelivery settles it.
    body, event_id = bodies[3]
    again = await receiver.receive(signed(body, event_id), body)
    assert again.status == 200
    assert sorted(r["event_id"] for r in await event_rows(dispatch_pool)) == sorted(
        e.event_id for e in sent
    )
    # The writer is idle and answers the next request at once.
    late = envelope()
    assert (await send_together(receiver, [(body_of(late), late.event_id)])) == [200]
