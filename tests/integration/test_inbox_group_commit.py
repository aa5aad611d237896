"""The inbox's group commit: requests arriving together share one transaction, each is
answered only after it, and a row that fails alone fails only its own request."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from dispatch_aio import Inbox, InboxResponse, Registry
from dispatch_aio._delivery import inbox_writer

from .delivery_helpers import SECRET, body_of, envelope, event_rows, signed
from .helpers import eventually

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
    # Each with the digest of the schema the inbox checked it against (ADR 0007).
    assert {r["checked_against"] for r in rows} == {
        REGISTRY.payload_digest(e.event_type, e.schema_version) for e in sent
    }


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


async def test_a_flush_keeps_its_connection_for_the_next_requests_then_gives_it_back(
    dispatch_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second, not 50 ms: the next request comes within it even on a busy machine.
    monkeypatch.setattr(inbox_writer, "_LINGER", 1.0)
    receiver = inbox(dispatch_pool)
    writer = receiver._writer
    first, second = envelope(), envelope()
    assert (await send_together(receiver, [(body_of(first), first.event_id)])) == [200]
    # Answered, and the flush still runs: it holds its connection for what comes next.
    lingering = writer._flushing
    assert lingering is not None
    assert (await send_together(receiver, [(body_of(second), second.event_id)])) == [200]
    assert writer._flushing is lingering  # written by the same run, on the same connection
    await lingering  # ends once no request has come for a while
    assert writer._flushing is None
    assert dispatch_pool.get_idle_size() == dispatch_pool.get_size()
    assert len(await event_rows(dispatch_pool)) == 2


async def test_a_request_queued_as_the_linger_runs_out_is_written(
    dispatch_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = inbox(dispatch_pool)
    first, late = envelope(), envelope()
    late_body = body_of(late)
    arrivals: list[asyncio.Task[InboxResponse]] = []
    wait = inbox_writer.InboxWriter._more_within

    async def runs_out_as_one_arrives(writer: inbox_writer.InboxWriter, seconds: float) -> None:
        await wait(writer, 0.0)  # nothing came: the wait has run out...
        if not arrivals:
            # ...and a request is queued before the flush goes on: its insert finds the
            # wait over and the flush still running, so only the flush can write it.
            arrivals.append(
                asyncio.create_task(receiver.receive(signed(late_body, late.event_id), late_body))
            )
            await asyncio.sleep(0)

    monkeypatch.setattr(inbox_writer.InboxWriter, "_more_within", runs_out_as_one_arrives)
    assert (await send_together(receiver, [(body_of(first), first.event_id)])) == [200]
    await eventually(lambda: bool(arrivals), within=10, what="the late request")
    assert (await arrivals[0]).status == 200
    assert len(await event_rows(dispatch_pool)) == 2
