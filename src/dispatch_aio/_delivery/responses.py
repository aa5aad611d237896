"""What a subscriber's answer means for the event: delivered, rejected, or retried. Pure.

========================  =========================================================
answer                    outcome
========================  =========================================================
2xx                       delivered
410 Gone                  :class:`~dispatch_aio.Reject`: the subscriber is gone
429, 503                  :class:`~dispatch_aio.RetryAfter` the ``Retry-After`` it asks
                          for (seconds or an HTTP date), capped
other 4xx, 1xx, 3xx       :class:`~dispatch_aio.Reject`: resending the same signed
                          request cannot change the answer; redirects are not
                          followed (a redirect could point past the SSRF guard)
other 5xx                 SubscriberUnavailableError: retried with the consumer's delays
========================  =========================================================

Timeouts and connection errors never reach this table: they are raised by the transport
and retried as ordinary handler failures.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC, datetime

from .._errors import SubscriberUnavailableError
from .._signals import Reject, RetryAfter

__all__ = ["check_response", "retry_after_seconds"]

_BODY_EXCERPT = 200


def retry_after_seconds(value: str | None, *, cap: float, now: datetime | None = None) -> float:
    """Seconds asked for by a ``Retry-After`` header, within ``[0, cap]``; 0 when unusable."""
    if not value:
        return 0.0
    value = value.strip()
    seconds: float
    if value.isascii() and value.isdigit():
        seconds = float(int(value[:12]))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return 0.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds) or seconds <= 0:
        return 0.0
    return min(seconds, cap)


def check_response(
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    body_excerpt: bytes | str = "",
    *,
    retry_after_cap: float,
    now: datetime | None = None,
) -> None:
    """Return when ``status`` means delivered; otherwise raise the outcome's signal.

    ``body_excerpt`` may be the answer's raw bytes: they are decoded (invalid UTF-8
    replaced) only when the outcome quotes them, never for a delivered event.
    Raises Reject, RetryAfter or SubscriberUnavailableError as the module table says.
    """
    if 200 <= status < 300:
        return
    if isinstance(body_excerpt, bytes):
        body_excerpt = body_excerpt.decode("utf-8", "replace")
    excerpt = body_excerpt[:_BODY_EXCERPT].strip()
    detail = f": {excerpt}" if excerpt else ""
    if status == 410:
        raise Reject(f"subscriber {endpoint!r} is gone (HTTP 410){detail}")
    if status in (429, 503):
        delay = retry_after_seconds(headers.get("retry-after"), cap=retry_after_cap, now=now)
        raise RetryAfter(delay, f"subscriber {endpoint!r} answered HTTP {status}; retry later")
    if status >= 500:
        raise SubscriberUnavailableError(endpoint, status)
    if 300 <= status < 400:
        raise Reject(f"subscriber {endpoint!r} answered a redirect (HTTP {status}), not followed")
    raise Reject(f"subscriber {endpoint!r} refused the event (HTTP {status}){detail}")
