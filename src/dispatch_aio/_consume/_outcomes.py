"""What happens to an event once its fate is known.

:class:`Outcomes` turns an outcome into statistics, telemetry, a log line and the
scheduler's :meth:`~dispatch_aio._consume._scheduler.Scheduler.complete`; and an event's
own failure into a retry (its attempt count stored in a short transaction of its own, so
that a restart continues it) or, once its retries are used up, a dead letter. The group
runner (``_runner``) decides which; this module only carries it out.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import asyncpg

from .._errors import LeaseLostError
from .._logfields import event_fields, tagged
from .._signals import Reject, RetryAfter
from .._storage import classify, is_usable
from .._storage._consumer_store import ConsumerStore, DeadLetterRow
from .._storage._driver import FailureKind
from .._telemetry import Telemetry
from ._codec import MAX_MESSAGE, dead_letter_row, storable
from ._config import ConsumerConfig
from ._items import Item, Outcome
from ._members import Members
from ._scheduler import Scheduler
from .leases_store import LeaseStore

__all__ = ["ConsumerStats", "Outcomes"]

logger = logging.getLogger("dispatch_aio.consumer")


@dataclass
class ConsumerStats:
    """What a consumer has done since it started (this process only)."""

    handled: int = 0
    dedup_hits: int = 0
    retried: int = 0
    dead_lettered: int = 0
    replayed: int = 0
    groups_committed: int = 0
    groups_rolled_back: int = 0
    fetches: int = 0
    reconnects: int = 0


class Outcomes:
    """Outcomes and failures of one consumer's events (see the module doc)."""

    def __init__(
        self,
        *,
        name: str,
        config: ConsumerConfig,
        retry_delays: dict[str, tuple[float, ...]],
        scheduler: Scheduler,
        store: ConsumerStore,
        stats: ConsumerStats,
        telemetry: Telemetry,
        leases: LeaseStore | None,
        members: Members | None,
    ) -> None:
        self.name = name
        self.config = config
        self.retry_delays = retry_delays
        self.scheduler = scheduler
        self.store = store
        self.stats = stats
        self.telemetry = telemetry
        self.leases = leases
        self.members = members
        self._log = {"consumer": name}
        self._rng = random.Random()

    def account(self, item: Item, outcome: Outcome) -> None:
        """One call per outcome: statistics, telemetry, log, then the scheduler."""
        stats, telemetry, name = self.stats, self.telemetry, self.name
        if outcome is Outcome.HANDLED:
            self.handled([item])
            return
        if outcome is Outcome.DONE_ELSEWHERE:
            stats.dedup_hits += 1
            telemetry.dedup_hit(item.event_type, name)
            if item.replay_of is not None:
                # An operator's request: say what became of it.
                fields = event_fields(
                    name, item.event_type, item.event_id, item.attempts, item.replay_of
                )
                logger.info(
                    "dead letter %s was no longer pending when its replay finished "
                    "(replayed elsewhere or resolved by hand): this run's outcome is dropped%s",
                    item.replay_of,
                    tagged(fields),
                    extra=fields,
                )
        elif outcome is Outcome.REPLAYED:
            stats.replayed += 1
            telemetry.consumed(item.event_type, name, item.row["producer"], "replayed")
            fields = event_fields(
                name, item.event_type, item.event_id, item.attempts, item.replay_of
            )
            logger.info(
                "replayed dead letter %s: event %s (%s) handled%s",
                item.replay_of,
                item.event_id,
                item.event_type,
                tagged(fields),
                extra=fields,
            )
        elif outcome is Outcome.DEAD_LETTERED:
            letter: DeadLetterRow = item.dead_letter
            stats.dead_lettered += 1
            reason = "exhausted" if letter.attempts else "invalid"
            telemetry.dead_lettered(item.event_type, name, reason)
            telemetry.consumed(item.event_type, name, item.row["producer"], "dead_lettered")
            fields = event_fields(
                name, item.event_type, item.event_id, letter.attempts, letter.dead_letter_id
            )
            logger.warning(
                "dead-lettered event %s (%s) as %s after %d attempts: %s: %s%s",
                item.event_id,
                item.event_type,
                letter.dead_letter_id,
                letter.attempts,
                letter.error_type,
                letter.error_message[:500],
                tagged(fields),
                extra={**fields, "reason": letter.error_type},
            )
        self.scheduler.complete(item, outcome)

    def handled(self, items: list[Item]) -> None:
        """:meth:`account` with ``Outcome.HANDLED`` for each of ``items``, once per group.

        The same statistics, counts and log lines; the outcome counter gets one call per
        (type, producer) instead of one per event, and the scheduler one call.
        """
        if not items:
            return
        name = self.name
        self.stats.handled += len(items)
        # A plain dict, not a Counter: its constructor's checks cost more than the count.
        counts: dict[tuple[str, str], int] = {}
        for item in items:
            key = (item.event_type, item.row["producer"])
            counts[key] = counts.get(key, 0) + 1
        consumed = self.telemetry.consumed
        for (event_type, producer), count in counts.items():
            consumed(event_type, name, producer, "handled", count)
        if logger.isEnabledFor(logging.DEBUG):  # once per event: build nothing otherwise
            for item in items:
                fields = event_fields(name, item.event_type, item.event_id, item.attempts)
                logger.debug(
                    "handled event %s (%s)%s",
                    item.event_id,
                    item.event_type,
                    tagged(fields),
                    extra=fields,
                )
        self.scheduler.complete_handled(items)

    async def fail(self, failed: Item, exc: BaseException, conn: asyncpg.Connection | None) -> None:
        """The event's own failure: retry it later, or dead-letter it."""
        delays = self.retry_delays[failed.event_type]
        log = event_fields(self.name, failed.event_type, failed.event_id, failed.attempts)
        if failed.replay_of is not None:
            await self.replay_failed(failed, f"{type(exc).__name__}: {exc}", conn)
            return
        retry = not isinstance(exc, Reject) and failed.attempts <= len(delays)
        if retry:
            delay = delays[failed.attempts - 1] * (
                1 + self._rng.uniform(0, self.config.retry_jitter)
            )
            if isinstance(exc, RetryAfter):
                delay = max(delay, exc.delay)
            self.stats.retried += 1
            self.telemetry.retried(failed.event_type, self.name)
            logger.warning(
                "handler failed on event %s (%s: %s); retry %d in %.2fs%s",
                failed.event_id,
                type(exc).__name__,
                exc,
                failed.attempts,
                delay,
                tagged(log),
                extra=log,
            )
            self.scheduler.retry(failed, delay)
            await self.store_attempt(failed, exc, conn)
            return
        logger.error(
            "handler failed %d times on event %s (%s: %s); dead-lettering%s",
            failed.attempts,
            failed.event_id,
            type(exc).__name__,
            exc,
            tagged(log),
            extra=log,
        )
        self.scheduler.dead_letter(
            failed, dead_letter_row(failed.row, exc, attempts=failed.attempts)
        )

    async def store_attempt(
        self, item: Item, exc: BaseException, conn: asyncpg.Connection | None
    ) -> None:
        """Persist the count, so a restart continues it; a failure here only logs."""
        if conn is None or not is_usable(conn):
            return
        error_text = storable(f"{type(exc).__name__}: {exc}", MAX_MESSAGE)
        try:
            if self.leases is not None and self.members is not None and item.partition >= 0:
                # Behind the fence, as outcomes are: a process that lost the partition
                # must not count attempts (nor, through them, dead-letter) there.
                [epoch] = self.members.epochs([item.partition]).values()
                await self.leases.record_attempt_fenced(
                    conn, item.event_id, item.attempts, error_text, item.partition, epoch
                )
            else:
                await self.store.record_attempt(conn, item.event_id, item.attempts, error_text)
        except LeaseLostError as lost:
            # The member task drops the partition's events (this one among them).
            if self.members is not None:
                self.members.wake.set()
                self.telemetry.lease_lost(self.name, self.members.store.member_id)
            logger.warning(
                "attempt %d not stored: %s",
                item.attempts,
                lost,
                extra={**self._log, "event_id": item.event_id},
            )
        except Exception as error:
            if classify(error, handler=False) is not FailureKind.INFRASTRUCTURE:
                raise
            logger.warning(
                "could not store attempt %d (%s: %s)",
                item.attempts,
                type(error).__name__,
                error,
                extra={**self._log, "event_id": item.event_id},
            )

    async def replay_failed(self, item: Item, error: str, conn: asyncpg.Connection | None) -> None:
        """Record a failed replay; left pending (read again later) when it cannot be."""
        fields = event_fields(
            self.name, item.event_type, item.event_id, item.attempts, item.replay_of
        )
        logger.warning(
            "replay of dead letter %s failed again: %s%s",
            item.replay_of,
            error[:500],
            tagged(fields),
            extra=fields,
        )
        recorded = False
        if conn is not None:
            try:
                await self.store.fail_replay(
                    conn, item.replay_of or "", storable(error, MAX_MESSAGE), item.attempts
                )
                recorded = True
            except Exception as failure:
                if classify(failure, handler=False) is not FailureKind.INFRASTRUCTURE:
                    raise
                logger.warning(
                    "could not record a failed replay (%s: %s)",
                    type(failure).__name__,
                    failure,
                    extra={**self._log, "event_id": item.event_id},
                )
        if not recorded and item.replay_of is not None:
            # Still pending in the database: the same request is run again when read.
            self.scheduler.end_replay(item.replay_of, recorded=False)
        self.scheduler.complete(item, Outcome.REPLAY_FAILED)
