"""Helpers for testing code that publishes or consumes dispatch-aio events.

Use them with the bundled pytest fixtures (``dispatch_pool``, ``dispatcher``, ...)::

    from dispatch_aio.testing import drain, instant_retries, published_events

    async def test_projection(dispatch_pool, dispatcher):
        await place_order(dispatcher, ...)                       # the code under test
        [event] = await published_events(dispatch_pool, event_type="payment.received")
        consumer = build_consumer(dispatch_pool, **instant_retries())
        result = await drain(consumer)
        assert result.handled == 1

:func:`drain` runs a consumer until everything visible is handled and reports what
happened; :func:`published_events` reads back what was published; :func:`instant_retries`
gives the consumer options that make retries immediate (the backoff delays become 0),
so a test of a failing handler runs in milliseconds. :class:`EmbeddedPostgres` is the
throwaway PostgreSQL server behind the ``dispatch_postgres`` fixture (``[embedded]``
extra), for suites and scripts that manage their own server. :func:`drain_fanout` drains
every endpoint consumer of a :class:`~dispatch_aio.fanout.Fanout` at once.
:func:`assert_model_matches` fails a test when a pydantic payload model and its registered
JSON Schema disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
from pydantic import BaseModel

from ._consumer import Consumer, ConsumerState, ConsumerStats
from ._db import translate_errors
from ._embedded import EmbeddedPostgres, find_pg_bin
from ._envelope import Envelope
from ._errors import LifecycleError, UsageError
from ._registry import Registry
from ._sql import queries

if TYPE_CHECKING:
    from ._delivery.fanout import Fanout

__all__ = [
    "DrainResult",
    "EmbeddedPostgres",
    "assert_model_matches",
    "drain",
    "drain_fanout",
    "find_pg_bin",
    "instant_retries",
    "published_events",
]


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What one :func:`drain` did: counts for this drain only, not since the start.

    ``handled`` events got the outcome *handled*; ``retried`` counts failed attempts that
    were retried; ``dead_lettered`` events were given up on (retries exhausted, or a
    payload that failed validation); ``dedup_hits`` events were skipped because this
    consumer had already handled them (for instance in an earlier drain); ``replayed``
    dead letters were handled again after ``DeadLetters.replay``.
    """

    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    dedup_hits: int = 0
    replayed: int = 0


# A deadline parameter on purpose: a drain that never ends must fail the test with a reason.
async def drain(consumer: Consumer, *, timeout: float = 30.0) -> DrainResult:  # noqa: ASYNC109
    """Run ``consumer`` until every visible event has an outcome; report what happened.

    A consumer that has not started is started, drained and closed (a Consumer runs once:
    build a new one for the next drain). A running consumer is drained and left running.
    Events published by handlers during the drain are drained too. An event is visible
    once its transaction commits *and* every transaction that began before it has ended:
    a transaction your test holds open keeps later events invisible, and the drain then
    waits for it.

    Retries wait their real delays: build the consumer with :func:`instant_retries` to
    test failing handlers. Raises TimeoutError after ``timeout`` seconds (a consumer it
    started is then aborted: handlers in flight are cancelled and roll back), and
    re-raises what stopped the consumer if it died.
    """
    state = consumer.state
    if state is ConsumerState.NEW:
        started_here = True
        await consumer.start()
    elif state is ConsumerState.RUNNING:
        started_here = False
    else:
        raise LifecycleError(
            f"drain needs a new or running consumer; consumer {consumer.name!r} is "
            f"{state.value}: build a new Consumer"
        )
    before = dataclasses.replace(consumer.stats)
    try:
        with anyio.fail_after(timeout):
            await _until_settled(consumer)
    except BaseException as exc:
        if started_here:
            consumer.abort()
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await consumer.wait()
        if isinstance(exc, TimeoutError):
            raise TimeoutError(
                f"consumer {consumer.name!r} was not idle after {timeout}s with "
                f"{consumer.backlog()} event(s) read and not finished: a handler that "
                "hangs, retries waiting real delays (use instant_retries()), or a "
                "transaction held open elsewhere that keeps newer events invisible"
            ) from None
        raise
    if started_here:
        await consumer.aclose()
    return _difference(before, consumer.stats)


# A deadline parameter on purpose, as for drain.
async def drain_fanout(fanout: Fanout, *, timeout: float = 30.0) -> dict[str, DrainResult]:  # noqa: ASYNC109
    """Drain every endpoint consumer of ``fanout`` together; report per subscriber name.

    A fan-out that has not started is started, drained and closed; a running one is
    drained and left running. Each endpoint is drained as :func:`drain` drains a
    consumer: until every visible event has an outcome (delivered, or dead-lettered),
    so an endpoint that keeps failing holds the drain until its retries run out. Raises
    TimeoutError after ``timeout`` seconds.
    """
    started_here = not fanout.started
    if started_here:
        await fanout.start()
    results: dict[str, DrainResult] = {}
    try:

        async def one(name: str, consumer: Consumer) -> None:
            results[name] = await drain(consumer, timeout=timeout)

        async with anyio.create_task_group() as tg:
            for name, consumer in fanout.consumers.items():
                tg.start_soon(one, name, consumer)
    except BaseException:
        if started_here:
            with anyio.CancelScope(shield=True):
                await fanout.aclose()
        raise
    if started_here:
        await fanout.aclose()
    return results


async def _until_settled(consumer: Consumer) -> None:
    # wait_idle covers what was committed before it was called; a group that committed
    # during the round may have published more, so go round again until one commits none.
    while True:
        committed = consumer.stats.groups_committed
        await consumer.wait_idle()
        if consumer.stats.groups_committed == committed:
            return


def _difference(before: ConsumerStats, after: ConsumerStats) -> DrainResult:
    return DrainResult(
        handled=after.handled - before.handled,
        retried=after.retried - before.retried,
        dead_lettered=after.dead_lettered - before.dead_lettered,
        dedup_hits=after.dedup_hits - before.dedup_hits,
        replayed=after.replayed - before.replayed,
    )


def instant_retries(retries: int = 3) -> dict[str, Any]:
    """Consumer options for tests: ``retries`` retries, each after no delay at all.

    ``Consumer(pool, name="shop", **instant_retries())`` is
    ``Consumer(pool, name="shop", retry_delays=(0, 0, 0))``: a failing handler is tried
    ``1 + retries`` times, then dead-lettered, without waiting. The same works for one
    handler: ``@consumer.on("payment.received", retry_delays=(0, 0))``.
    """
    if retries < 0:
        raise UsageError("retries must be >= 0")
    return {"retry_delays": (0.0,) * retries}


async def published_events(
    pool: asyncpg.Pool | asyncpg.Connection,
    *,
    event_type: str | None = None,
    subject: str | None = None,
    schema: str = "public",
) -> list[Envelope]:
    """The committed events, optionally of one type and/or subject, in position order.

    Given a connection inside a transaction, also returns that transaction's own
    uncommitted events. Position order is commit order for the events of one subject.
    """
    with translate_errors(schema):
        rows = await pool.fetch(queries(schema).published_events, event_type, subject)
    return [
        Envelope(
            event_id=row["event_id"],
            event_type=row["event_type"],
            schema_version=row["schema_version"],
            occurred_at=row["occurred_at"],
            tenant_id=row["tenant_id"],
            producer=row["producer"],
            subject=row["subject"],
            actor=row["actor"],
            payload=json.loads(row["payload"]),
            correlation_id=row["correlation_id"],
            causation_id=row["causation_id"],
            traceparent=row["traceparent"],
        )
        for row in rows
    ]


def assert_model_matches(
    model: type[BaseModel],
    event_type: str,
    *,
    version: int | None = None,
    registry: Registry | None = None,
) -> None:
    """Fail (AssertionError) when ``model`` and the payload schema of ``event_type`` disagree.

    Checks required fields, JSON types and enums, nested ones too, against the current
    version unless ``version`` is given; the message lists every mismatch with its field.
    ``registry`` defaults to :meth:`Registry.load` (``DISPATCH_AIO_CONTRACTS`` or bundled).
    """
    registry = registry if registry is not None else Registry.load()
    mismatches = registry.compare_model(event_type, model, version)
    if mismatches:
        where = f"{event_type} v{version or registry.current_version(event_type)}"
        lines = "\n".join(f"  {m}" for m in mismatches)
        raise AssertionError(f"{model.__name__} disagrees with the schema of {where}:\n{lines}")
