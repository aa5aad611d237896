"""The worker's periodic line: throughput and lag every N seconds.

::

    consumer coaching: 1520 handled (25.3/s), 2 dead-lettered, 4 retried, 0 replayed in
    the last 60s; lag 12 events [consumer=coaching handled=1520 ... lag=12]

The counts are this process's (:class:`~dispatch_aio.ConsumerStats`) since the previous
line; the lag is the database's (events after the consumer's cursors, every process of
it together), read with :func:`~dispatch_aio.consumer_status`. A failed lag read only
leaves the lag out of that line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the consumer is imported by the worker command when it runs
    from .._consume import Consumer, ConsumerStats

__all__ = ["StatsLine", "report_stats"]

logger = logging.getLogger("dispatch_aio.worker")


@dataclass(frozen=True)
class StatsLine:
    """What one stats line says. Pure."""

    consumer: str
    seconds: float
    handled: int
    dead_lettered: int
    retried: int
    replayed: int
    lag: int | None

    @classmethod
    def between(
        cls,
        consumer: str,
        before: ConsumerStats,
        after: ConsumerStats,
        seconds: float,
        lag: int | None,
    ) -> StatsLine:
        """The line for the counts moved from ``before`` to ``after`` in ``seconds``."""
        return cls(
            consumer=consumer,
            seconds=seconds,
            handled=after.handled - before.handled,
            dead_lettered=after.dead_lettered - before.dead_lettered,
            retried=after.retried - before.retried,
            replayed=after.replayed - before.replayed,
            lag=lag,
        )

    @property
    def rate(self) -> float:
        """Handled events per second."""
        return self.handled / self.seconds if self.seconds > 0 else 0.0

    def message(self) -> str:
        """The line an operator reads."""
        lag = "unknown" if self.lag is None else f"{self.lag} events"
        return (
            f"consumer {self.consumer}: {self.handled} handled ({self.rate:.1f}/s), "
            f"{self.dead_lettered} dead-lettered, {self.retried} retried, "
            f"{self.replayed} replayed in the last {self.seconds:.0f}s; lag {lag}"
        )

    def fields(self) -> dict[str, Any]:
        """The same figures for ``extra`` (a JSON log line)."""
        return {
            "consumer": self.consumer,
            "interval_seconds": round(self.seconds, 3),
            "handled": self.handled,
            "handled_per_second": round(self.rate, 3),
            "dead_lettered": self.dead_lettered,
            "retried": self.retried,
            "replayed": self.replayed,
            "lag": self.lag,
        }


def _snapshot(stats: ConsumerStats) -> ConsumerStats:
    return type(stats)(**vars(stats))


async def _lag(consumer: Consumer, within: float) -> int | None:
    from .._status import consumer_status

    try:
        async with asyncio.timeout(within):
            report = await consumer_status(
                consumer.pool, schema=consumer.config.db_schema, consumer=consumer.name
            )
    except Exception as exc:  # the database is away: the next line tries again
        logger.debug("could not read the lag of %s: %s", consumer.name, exc)
        return None
    return sum(h.lag for h in report.consumers)


async def report_stats(consumer: Consumer, interval: float) -> None:
    """Log a :class:`StatsLine` every ``interval`` seconds until cancelled."""
    before = _snapshot(consumer.stats)
    since = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        lag = await _lag(consumer, within=min(interval, 10.0))
        after = _snapshot(consumer.stats)
        now = time.monotonic()
        line = StatsLine.between(consumer.name, before, after, now - since, lag)
        logger.info("%s", line.message(), extra=line.fields())
        before, since = after, now
