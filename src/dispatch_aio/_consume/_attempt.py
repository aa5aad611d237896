"""One handler attempt: its count, the handler under its deadline (and span), its latency."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from .._telemetry import Telemetry
from ._deadline import HandlerDeadline
from ._handlers import Subscription, cancelled, consumer_cancelling
from ._items import Item

__all__ = ["run_attempt"]


async def run_attempt(
    telemetry: Telemetry,
    consumer: str,
    subscription: Subscription,
    item: Item,
    event: Any,
    conn: asyncpg.Connection,
    deadline: HandlerDeadline,
    tracing: bool,
) -> None:
    """Run ``item``'s handler once, under a CONSUMER span when ``tracing``.

    The attempt is counted on ``item`` first. A cancellation not the consumer's own
    becomes :class:`HandlerCancelledError`; the handler's deadline, TimeoutError.
    """
    item.attempts += 1
    if item.attempts != event.attempt:
        event = item.event = event.model_copy(update={"attempt": item.attempts})
    started = time.time()
    # occurred_at as the row holds it: no datetime.timestamp() per event.
    end_to_end_ms = started * 1000.0 - item.row["occurred_us"] / 1000.0
    try:
        if tracing:
            with telemetry.consume_span(
                event_type=item.event_type,
                event_id=item.event_id,
                consumer=consumer,
                attempt=item.attempts,
                traceparent=event.traceparent,
                partition=item.partition,
            ) as span:
                try:
                    await _invoke(subscription, event, conn, deadline)
                except Exception as exc:
                    telemetry.mark_error(span, exc)
                    raise
        else:
            handling = (
                subscription.handler(event, conn)
                if subscription.wants_conn
                else subscription.handler(event)
            )
            timeout = subscription.timeout
            if timeout is None:
                await handling
            else:
                # deadline.limit taken apart: one coroutine less per event.
                deadline.start(timeout)
                try:
                    await handling
                except asyncio.CancelledError:
                    if deadline.expired():
                        raise TimeoutError from None  # a handler failure
                    raise
                finally:
                    deadline.end()
    except asyncio.CancelledError:
        if consumer_cancelling():
            raise
        raise cancelled(item) from None
    telemetry.observe_latency(
        item.event_type, consumer, end_to_end_ms, (time.time() - started) * 1000.0
    )


async def _invoke(
    subscription: Subscription,
    event: Any,
    conn: asyncpg.Connection,
    deadline: HandlerDeadline,
) -> None:
    # One timer per group, not one per event (see _deadline). TimeoutError counts as
    # a handler failure.
    if subscription.wants_conn:
        await deadline.limit(subscription.handler(event, conn), subscription.timeout)
    else:
        await deadline.limit(subscription.handler(event), subscription.timeout)
