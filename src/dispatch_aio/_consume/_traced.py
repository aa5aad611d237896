"""The traced handler call: one handler attempt under its CONSUMER span."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from .._telemetry import Telemetry
from ._deadline import HandlerDeadline
from ._handlers import Subscription, cancelled, consumer_cancelling
from ._scheduler import Item

__all__ = ["traced_call"]


async def traced_call(
    telemetry: Telemetry,
    consumer: str,
    subscription: Subscription,
    item: Item,
    event: Any,
    conn: asyncpg.Connection,
    deadline: HandlerDeadline,
) -> None:
    """One handler attempt under its CONSUMER span (the untraced path is the runner's).

    A cancellation not the consumer's own becomes :class:`HandlerCancelledError`.
    """
    item.attempts += 1
    if item.attempts != event.attempt:
        event = item.event = event.model_copy(update={"attempt": item.attempts})
    started = time.time()
    end_to_end_ms = started * 1000.0 - item.row["occurred_us"] / 1000.0
    try:
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
