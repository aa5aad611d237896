"""Fan-out forwards events as stored: the same bodies, dead letters and replays as an
Event gave, and a payload its schema refuses is the receiving inbox's to refuse."""

from __future__ import annotations

import json

import asyncpg
import pytest

from dispatch_aio import DeadLetters, Dispatcher, FanoutConfig, Registry
from dispatch_aio._codec import event_from_row
from dispatch_aio._consume._codec import parse_payload
from dispatch_aio._delivery.fanout import envelope_json
from dispatch_aio.fanout import Fanout
from dispatch_aio.pytest_plugin import TestPostgres
from dispatch_aio.testing import drain_fanout

from .delivery_helpers import (
    SECRET,
    ScriptedSubscriber,
    extra_database,
    fanout_config,
    serve_in_process,
)
from .helpers import locked_payload, uid

pytestmark = pytest.mark.anyio

REGISTRY = Registry.load()
#: The consumer's read of a row, as far as the Event is concerned.
ROW = """
SELECT event_id, event_type, schema_version, tenant_id, producer, subject, actor,
       correlation_id, causation_id, traceparent, payload, position,
       ((extract(epoch FROM occurred_at) * 1000000)::numeric(30, 0))::bigint AS occurred_us
FROM dispatcher_event WHERE event_id = $1
"""


def fanout(pool: asyncpg.Pool, url: str) -> Fanout:
    config = FanoutConfig.from_mapping(fanout_config({"coaching": url}))
    return Fanout(pool, config, registry=REGISTRY, consumer_options={"retry_jitter": 0.0})


async def test_the_body_is_the_bytes_an_event_of_the_row_gave(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    envelope = await dispatcher.publish(
        "credit.locked",
        locked_payload(),
        subject=uid("per"),
        actor="system:revenue",
        correlation_id="cor_stored",
    )
    subscriber = ScriptedSubscriber()
    async with serve_in_process(subscriber) as port:
        subscriber.port = port
        await drain_fanout(fanout(dispatch_pool, subscriber.url))
    row = dict(await dispatch_pool.fetchrow(ROW, envelope.event_id))
    [body] = subscriber.bodies
    assert body == envelope_json(event_from_row(row, parse_payload(row["payload"])))
    assert json.loads(body) == envelope.to_json_dict()


async def test_a_dead_letter_holds_the_envelope_and_its_replay_delivers_once(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher
) -> None:
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:revenue"
    )
    subscriber = ScriptedSubscriber(answers=[(410, {})])
    dead_letters = DeadLetters(dispatch_pool)
    async with serve_in_process(subscriber) as port:
        subscriber.port = port
        results = await drain_fanout(fanout(dispatch_pool, subscriber.url))
        assert results["coaching"].dead_lettered == 1
        [letter] = (await dead_letters.list("fanout.coaching")).items
        assert letter.event_id == envelope.event_id
        assert letter.attempts == 1
        assert letter.envelope == envelope.to_json_dict()

        await dead_letters.replay(letter.dead_letter_id, replayed_by="ops:tests")
        await drain_fanout(fanout(dispatch_pool, subscriber.url))
    assert [r["event_id"] for r in subscriber.received] == [envelope.event_id] * 2
    assert subscriber.received[1] == envelope.to_json_dict()
    row = await dead_letters.get(letter.dead_letter_id)
    assert row.replay_status == "succeeded"


async def test_a_payload_its_schema_refuses_is_refused_by_the_inbox(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_postgres: TestPostgres
) -> None:
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:revenue"
    )
    # Written behind the dispatcher's back: publish would have refused it.
    await dispatch_pool.execute(
        "UPDATE dispatcher_event SET payload = '{\"unexpected\": 1}' WHERE event_id = $1",
        envelope.event_id,
    )
    from dispatch_aio.inbox import serve_inbox

    async with (
        extra_database(dispatch_postgres) as receiver_dsn,
        serve_inbox(receiver_dsn, secrets=[SECRET]) as inbox,
    ):
        results = await drain_fanout(fanout(dispatch_pool, inbox.url))
        assert await inbox.pool.fetchval("SELECT count(*) FROM dispatcher_event") == 0
    assert results["coaching"].dead_lettered == 1
    [letter] = (await DeadLetters(dispatch_pool).list("fanout.coaching")).items
    assert "HTTP 422" in letter.error_message
    assert letter.envelope["payload"] == {"unexpected": 1}
