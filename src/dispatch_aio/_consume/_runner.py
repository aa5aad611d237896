"""The group runner: run a group's handlers in one transaction and commit their outcomes.

A group is head events of ready subjects (from the scheduler). Handlers run one after
another on one connection; then every outcome (dedup marker, dead letter, finished
replay) is written and the group commits once. What a failure means is decided by the
driver boundary (``_storage.classify``):

- *infrastructure* (connection lost, server restarting, deadlock, serialization, commit
  timeout): the group rolls back and runs again later; no attempt is counted;
- *the event's own failure* (a handler raised, or was cancelled by something other than
  the consumer's shutdown; or a single event's outcome cannot be committed): one attempt
  is counted and stored, the event waits for its retry, or is dead-lettered once its
  retries are used up; the other events of the group run again;
- a group that fails to commit for a reason of its own is split: each event then runs
  alone, and the one that keeps failing is the event's failure;
- anything else is a bug in the consumer: it propagates and fails the consumer.

Carrying an outcome out (statistics, telemetry, logs, retries with their stored counts,
dead letters) is ``_outcomes``'s part; a handler's subscription and how its cancellation
is told apart, ``_handlers``'s; one handler attempt (its count, deadline, span and
latency), ``_attempt``'s;
what an uncertain or failed commit leaves behind (doubt settled, a group split, a lost
lease's events dropped), ``_settle``'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from .._errors import LeaseLostError
from .._storage import classify, commit, is_infrastructure, is_usable, rollback
from .._storage._consumer_store import ConsumerStore, DeadLetterRow
from .._storage._driver import FailureKind, keeps_connection
from .._telemetry import Telemetry
from ._attempt import run_attempt
from ._codec import EventDecoder
from ._config import ConsumerConfig
from ._deadline import HandlerDeadline
from ._handlers import Subscription
from ._items import Item, Outcome
from ._members import Members
from ._outcomes import ConsumerStats, Outcomes
from ._scheduler import Scheduler
from ._settle import commit_failed, lease_lost, settle_doubt
from .leases_store import LeaseStore

__all__ = ["GroupRunner"]

logger = logging.getLogger("dispatch_aio.consumer")


class _RerunGroup(Exception):
    """Infrastructure failed under a handler: roll back, run the group again later."""


class GroupRunner:
    """Runs groups for one consumer; reports every outcome to the scheduler."""

    def __init__(
        self,
        *,
        name: str,
        config: ConsumerConfig,
        subscriptions: dict[str, Subscription],
        scheduler: Scheduler,
        store: ConsumerStore,
        stats: ConsumerStats,
        telemetry: Telemetry,
        decode: EventDecoder,
        leases: LeaseStore | None = None,
        members: Members | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.decode = decode
        #: Set when the consumer stops: a running group then takes no more subjects.
        self.stopping = stopping if stopping is not None else asyncio.Event()
        self.leases = leases
        self.members = members
        self.name = name
        self.config = config
        self.subscriptions = subscriptions
        self.scheduler = scheduler
        self.store = store
        self.stats = stats
        self.telemetry = telemetry
        self._log = {"consumer": name}
        self._limit = config.commit_timeout
        #: Statistics, telemetry, logs and the scheduler's verbs for every outcome.
        self.outcomes = Outcomes(
            name=name,
            config=config,
            retry_delays={t: s.retry_delays for t, s in subscriptions.items()},
            scheduler=scheduler,
            store=store,
            stats=stats,
            telemetry=telemetry,
            leases=leases,
            members=members,
        )

    # -- one group -------------------------------------------------------------------

    async def run(
        self, group: list[Item], conn: asyncpg.Connection, posted: list[str] | None = None
    ) -> bool:
        """Handle ``group`` on ``conn``; True when ``conn`` can be used again.

        ``posted`` is the mailbox ``group`` was taken with (``Scheduler.take_subject``):
        with it, the group takes more events as it gets through them.

        Cancellation (the consumer's shutdown) rolls back and puts the group back.
        Raises only for a bug in the consumer.
        """
        deadline = HandlerDeadline()
        try:
            return await self._run(group, conn, deadline, posted)
        finally:
            deadline.close()

    async def _run(
        self,
        group: list[Item],
        conn: asyncpg.Connection,
        deadline: HandlerDeadline,
        posted: list[str] | None,
    ) -> bool:
        transaction: Any = None
        ran: list[Item] = []
        head = group[0]
        if head.replay_of is not None and head.dead_letter is not None:
            # A replayed event that still cannot be decoded: the replay failed (replays
            # run alone); no second dead letter.
            letter: DeadLetterRow = head.dead_letter
            await self.outcomes.replay_failed(
                head, f"{letter.error_type}: {letter.error_message}", conn
            )
            return is_usable(conn)
        committing = False
        try:
            # The group grows while it runs (Scheduler.take_more), in place: the worker
            # releases the list it gave. Not a lone event, not a replay, and not a group
            # that settled a commit in doubt (that gives a new list).
            if head.isolate or head.replay_of is not None:
                posted = None
            if any(i.in_doubt for i in group):
                group = await settle_doubt(group, conn, self.store, self.outcomes, self._limit)
                posted = None
                if not group:
                    return is_usable(conn)
            failure: tuple[Item, BaseException] | None = None
            # Looked up once per group (it is kept for a second anyway).
            tracing = self.telemetry.tracing_enabled()
            decode = self.decode.item_event
            scheduler = self.scheduler
            stopping = self.stopping
            index = 0
            while True:
                if index == len(group):
                    if posted is None or stopping.is_set() or self._handing_over(group):
                        break
                    more = scheduler.take_more(index, posted)
                    if not more:
                        break
                    group.extend(more)
                item = group[index]
                index += 1
                if item.dead_letter is not None or item.succeeded:
                    continue
                event = item.event  # only a replay's is built ahead (see read_replays)
                if event is None:
                    # Built now, not when read: see EventDecoder. Not kept on the item: it
                    # goes when the handler is done with it. A row that cannot be decoded
                    # is dead-lettered with this group.
                    event = decode(item)
                    if event is None:
                        continue
                subscription = self.subscriptions[item.event_type]
                if subscription.wants_conn and transaction is None:
                    transaction = conn.transaction()
                    async with asyncio.timeout(self._limit):
                        await transaction.start()
                try:
                    await run_attempt(
                        self.telemetry,
                        self.name,
                        subscription,
                        item,
                        event,
                        conn,
                        deadline,
                        tracing,
                    )
                except Exception as exc:
                    if is_infrastructure(exc, conn):
                        raise _RerunGroup from exc
                    failure = (item, exc)
                    break
                ran.append(item)
            if failure is not None:
                usable = await rollback(transaction, conn, self._limit)
                transaction = None
                self.stats.groups_rolled_back += 1
                self._undo(ran)
                self.scheduler.requeue(i for i in group if i is not failure[0])
                await self.outcomes.fail(*failure, conn if usable else None)
                return usable
            statements = (
                any(i.dead_letter is not None for i in group)
                + any(i.replay_of is not None for i in group)
                + any(i.replay_of is None for i in group)
            )
            # The library's own statements are bounded like its commit: on a connection
            # whose peer vanished (a partition, a dead NAT entry) they would otherwise
            # wait for TCP to give up. TimeoutError is infrastructure: the group reruns.
            committing = True  # from here on a lost connection leaves the outcome unknown
            async with asyncio.timeout(self._limit):
                if transaction is None and statements > 1:
                    transaction = conn.transaction()
                    await transaction.start()
                recorded = await self._record(conn, group, in_transaction=transaction is not None)
            if not recorded:
                return await rollback(transaction, conn, self._limit)
            if transaction is not None:
                await commit(transaction, conn, self._limit)
                transaction = None
            self._finish(group)
            return True
        except LeaseLostError as exc:
            # Another process took over (we were paused past our lease): commit nothing,
            # count no attempt; the lost partitions' events are the new owner's now.
            usable = await rollback(transaction, conn, self._limit)
            self.stats.groups_rolled_back += 1
            self._undo(ran)
            lease_lost(
                group, exc, self.scheduler, self.members, self.telemetry, self.name, self._log
            )
            return usable
        except Exception as exc:
            usable = await rollback(transaction, conn, self._limit)
            self.stats.groups_rolled_back += 1
            cause = exc.__cause__ if isinstance(exc, _RerunGroup) else exc
            assert cause is not None
            if isinstance(exc, _RerunGroup) or classify(exc, handler=False) is (
                FailureKind.INFRASTRUCTURE
            ):
                self._undo(ran)
                if committing:
                    for item in group:
                        item.in_doubt = True
                self.scheduler.requeue(group)
                logger.warning(
                    "database failed under a group of %d events (%s: %s); they will run again",
                    len(group),
                    type(cause).__name__,
                    cause,
                    extra=self._log,
                )
                return usable and keeps_connection(cause, conn)
            if isinstance(exc, asyncpg.PostgresError):
                if len(group) == 1 and group[0].dead_letter is None:
                    # The event ran alone and its outcome still cannot commit (its
                    # handler swallowed a database error): its own failure, an attempt.
                    [item] = group
                    if item not in ran:
                        item.attempts += 1
                    item.succeeded = False
                    await self.outcomes.fail(item, exc, conn if usable else None)
                    return usable
                self._undo(ran)
                return await commit_failed(group, exc, self.scheduler, self._log) and usable
            raise
        except BaseException:
            # Cancelled (the consumer stops): nothing committed, the events run again later.
            await rollback(transaction, conn, self._limit)
            self._undo(ran)
            self.scheduler.requeue(group)
            raise

    def _handing_over(self, group: list[Item]) -> bool:
        """A partition of ``group`` is being handed over: the group takes no more and
        commits, so the partition can go to its new owner."""
        members = self.members
        if members is None or not members.handing_over:
            return False
        return not members.handing_over.isdisjoint(i.partition for i in group)

    # -- handlers --------------------------------------------------------------------

    def _undo(self, ran: list[Item]) -> None:
        """Handlers of a rolled-back group: their attempt neither failed nor counted."""
        for item in ran:
            if item.done or item.dead_letter is not None or item.succeeded:
                continue
            if self.subscriptions[item.event_type].wants_conn:
                item.attempts -= 1  # its writes were rolled back: it runs again
            else:
                item.succeeded = True  # nothing to undo: only its marker is left to write

    # -- outcomes --------------------------------------------------------------------

    async def _record(
        self, conn: asyncpg.Connection, group: list[Item], *, in_transaction: bool
    ) -> bool:
        """Write the group's outcomes; False when another process finished some first.

        Outside a transaction (one statement, no handler wrote) the markers that went in
        are already committed: those events are done, the others were done elsewhere.
        """
        scheduler = self.scheduler
        letters = [i.dead_letter for i in group if i.dead_letter is not None]
        if letters:
            await self.store.record_dead_letters(conn, letters)
        replays = [i for i in group if i.replay_of is not None and i.dead_letter is None]
        if replays:
            finished = await self.store.finish_replays(conn, [i.replay_of for i in replays])  # type: ignore[misc]
            lost = [i for i in replays if i.replay_of not in finished]
            if lost:
                # Replayed by another process, or resolved by hand, since it was read.
                for item in lost:
                    self.outcomes.account(item, Outcome.DONE_ELSEWHERE)
                self._undo([i for i in group if i not in lost])
                scheduler.requeue(i for i in group if i not in lost)
                return False
        regular = [i for i in group if i.replay_of is None]
        if regular:
            ids = [i.event_id for i in regular]
            dead = [i.event_id for i in regular if i.dead_letter is not None]
            if self.leases is not None and self.members is not None:
                # Behind the fence (ADR 0006): one statement, as without it.
                missing = await self.leases.record_outcomes_fenced(
                    conn,
                    ids,
                    dead,
                    self.members.epochs({i.partition for i in regular}),
                )
            else:
                missing = await self.store.record_outcomes(
                    conn,
                    ids,
                    dead,
                    [i.event_type for i in regular],
                    [i.xid for i in regular],
                    [i.position for i in regular],
                )
            if missing:
                for item in regular:
                    if item.event_id in missing:
                        self.outcomes.account(item, Outcome.DONE_ELSEWHERE)
                if not in_transaction:
                    return True  # the markers that went in are committed: all done
                # Another process of this consumer finished some of these first: drop our
                # effects for the whole group; the others run again.
                rest = [i for i in group if not i.done]
                self._undo(rest)
                scheduler.requeue(rest)
                return False
        return True

    def _finish(self, group: list[Item]) -> None:
        self.stats.groups_committed += 1
        handled: list[Item] = []
        for item in group:
            if item.done:
                continue  # finished by another process of this consumer
            if item.replay_of is not None and item.dead_letter is None:
                self.outcomes.account(item, Outcome.REPLAYED)
            elif item.dead_letter is not None:
                self.outcomes.account(item, Outcome.DEAD_LETTERED)
            else:
                handled.append(item)
        self.outcomes.handled(handled)
