"""Exceptions a handler raises to choose its event's outcome.

They are not errors of dispatch-aio (they do not derive from ``DispatchError``): a
handler raises them on purpose. Any other exception from a handler counts an attempt
and is retried with the consumer's delays.

- :class:`Reject`: the event cannot succeed (a subscriber answered 410 Gone, a 4xx, a
  business rule refuses it). It is dead-lettered at once, without further retries.
- :class:`RetryAfter`: the event may succeed later, but not before ``delay`` seconds
  (a subscriber answered 429 or 503 with ``Retry-After``). It counts an attempt; the
  wait is the larger of ``delay`` and the consumer's own delay for that attempt, and
  the event is dead-lettered when its retries are used up, as for any failure.
"""

from __future__ import annotations

import math

__all__ = ["HandlerSignal", "Reject", "RetryAfter"]


class HandlerSignal(Exception):
    """Base of the exceptions a handler raises to choose its event's outcome."""


class Reject(HandlerSignal):
    """Dead-letter this event now: retrying cannot help. ``reason`` goes in the row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryAfter(HandlerSignal):
    """Retry this event no sooner than ``delay`` seconds from now (counts an attempt)."""

    def __init__(self, delay: float, reason: str = "") -> None:
        delay = float(delay)
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"RetryAfter needs a finite delay >= 0 seconds, not {delay!r}")
        super().__init__(reason or f"retry after {delay:g}s")
        self.delay = delay
        self.reason = reason
