"""A subscribed handler with its settings, and how its cancellation is told apart."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from .._typed import PayloadModel
from ._codec import AS_STORED
from ._items import Item

__all__ = [
    "Handler",
    "HandlerCancelledError",
    "Subscription",
    "cancelled",
    "consumer_cancelling",
    "taking_stored_events",
]

Handler = Callable[..., Awaitable[None]]


class HandlerCancelledError(Exception):
    """A handler was cancelled by something other than the consumer's shutdown.

    For example it awaited a future another task cancelled. It counts as the event's
    failure (an attempt), so that the consumer neither stops nor loses the event.
    """


def consumer_cancelling() -> bool:
    """Whether a handler's CancelledError is the consumer's own (its shutdown, a drain
    timeout): re-raise it then; otherwise it is the event's failure."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def cancelled(item: Item) -> HandlerCancelledError:
    """The event's failure for a handler cancelled by something other than the consumer."""
    return HandlerCancelledError(
        f"the handler of {item.event_type} was cancelled, not by the consumer"
    )


@dataclass(frozen=True, slots=True)
class Subscription:
    """A handler with its retry delays and timeout."""

    event_type: str
    handler: Handler
    wants_conn: bool
    retry_delays: tuple[float, ...]
    timeout: float | None
    #: The pydantic model of a handler typed ``Event[Model]``: payloads are parsed into it.
    #: ``AS_STORED`` for a handler that takes a StoredEvent (see taking_stored_events).
    payload_model: PayloadModel | None = None


def taking_stored_events(subscription: Subscription) -> Subscription:
    """``subscription`` with its handler given a ``StoredEvent`` per event, not an Event.

    For a handler that forwards events as they are (the fan-out): the payload is not
    checked against its schema again, and no Event is built (see ``_codec.StoredEvent``).
    """
    return replace(subscription, payload_model=AS_STORED)
