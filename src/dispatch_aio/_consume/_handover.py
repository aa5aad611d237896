"""Partitions changing hands, carried into the read path (ADR 0006, part B).

The member task (``_members``) decides what this process holds; :class:`HandOver` makes
the fetcher, the scheduler and the read loop follow, with the guarantees the design
needs:

- a lost or released partition is forgotten at once, with no await in between: no
  cursor of it is stored after that, and its queued events are dropped (the new owner
  reads them from its stored cursor);
- a partition handed over is not read any more, its cursor is stored below its own
  events without an outcome (:meth:`TypeMarks.partition_marks`), and its queued events
  are dropped as a lost one's are: only what already runs in a group finishes here, so
  the partition goes to its new owner as soon as those groups end, not after its whole
  backlog;
- a gained partition is read from its stored cursor, by a catch-up stream that merges
  into the main one once both catch up (a read on the wire meanwhile is dropped by the
  fetcher): what is held already is not read again;
- while partitions are being taken on, no read finds the consumer idle
  (:meth:`HandOver.idle_counts`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import asyncpg

from ._fetcher import Fetcher
from ._members import Members
from ._reader import ReadLoop
from ._scheduler import Scheduler
from .assignment import PARTITION_COUNT
from .leases_store import LeaseStore

__all__ = ["HandOver"]

logger = logging.getLogger("dispatch_aio.consumer")


class HandOver:
    """The read path's side of a change of partitions: :meth:`lost` and :meth:`changed`."""

    def __init__(
        self,
        *,
        members: Members,
        leases: LeaseStore,
        fetcher: Fetcher,
        scheduler: Scheduler,
        reader: ReadLoop,
        event_types: Sequence[str],
        log_extra: dict[str, Any],
    ) -> None:
        self._members = members
        self._leases = leases
        self._fetcher = fetcher
        self._scheduler = scheduler
        self._reader = reader
        self._event_types = list(event_types)
        self._log = log_extra
        #: The last read begun before the stream last took partitions on.
        self._settled_seq = -1

    def lost(self, lost: set[int]) -> None:
        """Leases lost or released: stop reading and storing cursors for them, and drop
        their queued events. Synchronous: no cursor of theirs is stored after this."""
        reader = self._reader
        reader.cursor_partitions = _all(reader.cursor_partitions) - lost
        self._fetcher.restart(self._members.readable(), None)
        self._drop(lost, "lost partitions")

    async def changed(self, conn: asyncpg.Connection, gained: set[int]) -> None:
        """Leases gained, or some to hand over: read what is held (minus what is handed
        over) from now on; gained partitions from their stored cursors."""
        reader, fetcher, scheduler = self._reader, self._fetcher, self._scheduler
        readable = self._members.readable()
        # At once, before any await: stop reading what is handed over (a read on the wire
        # is dropped), and read nothing gained before its stream starts from its cursor.
        before = fetcher.partitions
        kept = _intersect(before, readable)
        leaving: dict[tuple[str, int], tuple[int, int]] = {}
        if kept != before:
            # Their own marks, taken while their events are still here: the next owner
            # starts below what has no outcome in them, not at the type's mark.
            leaving = scheduler.marks.partition_marks(
                scheduler.inflight.values(), set(_all(before) - _all(kept))
            )
            fetcher.restart(kept, None)
            reader.cursor_partitions = kept
        if self._members.handing_over:
            # Not handled here any more: the next owner reads them from the stored cursor.
            self._drop(set(self._members.handing_over), "partitions handed over")
        # Cursors moved so far hold for the partitions the stream still covers.
        with contextlib.suppress(Exception):
            await reader.flush_cursors(conn)
            if reader.cursors_trusted():
                # Stored only forwards: a mark below one stored already changes nothing.
                await self._leases.advance_cursors(conn, leaving)
        start: tuple[int, int] | None = None
        floors: dict[int, tuple[int, int]] = {}
        if gained:
            stored = await self._leases.read_cursors(conn, self._event_types, gained)
            # The gained partitions are read from their lowest stored cursor, by a stream
            # of their own; the cursors stored for everything held follow the lower mark.
            floors, _ = _lowest(stored, gained)
            start = min(floors.values(), default=fetcher.low_water())
            scheduler.marks.restart(min(start, fetcher.low_water()))
        fetcher.restart(readable, start, floors)
        reader.cursor_partitions = readable
        # Reads begun so far covered less than is held now: none of them finds it idle.
        self._settled_seq = reader.fetch_seq
        reader.wake.set()

    async def reread(self, conn: asyncpg.Connection) -> None:
        """Read everything held again from the stored cursors, which ``conn`` reads.

        For after the read connection was lost: the server may have crashed, and crash
        recovery hands out again the ids of transactions whose end never reached the
        disk. The streams passed such ids as over; a new transaction under one of them
        commits rows below their frontiers, which they would never read. A stored cursor
        is below every such id (ADR 0006: the transaction that stored it committed, so
        recovery hands out only ids above its own). Events held here already run on;
        rows read again are skipped by position or by their markers.
        """
        reader, fetcher, scheduler = self._reader, self._fetcher, self._scheduler
        stored = await self._leases.read_cursors(conn, self._event_types, range(PARTITION_COUNT))
        # No await from here on: what is held is what the member task holds now.
        readable = self._members.readable()
        floors, per_type = _lowest(stored, _all(readable))
        start = min(floors.values(), default=min(stored.values(), default=(0, 0)))
        scheduler.marks.restart(start, per_type)
        fetcher.reset(readable, start, floors)
        # Reads begun so far knew less than is known now: none of them finds it idle.
        self._settled_seq = reader.fetch_seq
        logger.info(
            "read connection lost: reading the partitions held again from their stored"
            " cursors (a server restart may hand out transaction ids again)",
            extra=self._log,
        )

    def _drop(self, partitions: set[int], what: str) -> None:
        """Drop the queued events of ``partitions``; room made without a group finishing
        lets a read loop paused on a full buffer read on now (it would wait for the next
        group to end)."""
        reader, scheduler = self._reader, self._scheduler
        dropped = scheduler.drop(partitions)
        if dropped:
            logger.info("%d queued events of %s dropped", dropped, what, extra=self._log)
            if len(scheduler.inflight) < reader.refill_below:
                reader.capacity.set()

    def idle_counts(self, idle_seq: int, since: int) -> bool:
        """Whether the read numbered ``idle_seq``, which found nothing, shows the consumer
        idle for a waiter that started at read ``since``: begun after that, after the
        stream last took partitions on, and not while partitions held are not read yet."""
        members = self._members
        return (
            idle_seq > max(since, self._settled_seq)
            and not members.settling
            and not members.unstarted
        )


def _lowest(
    stored: Mapping[tuple[str, int], tuple[int, int]], held: Collection[int]
) -> tuple[dict[int, tuple[int, int]], dict[str, tuple[int, int]]]:
    """The lowest of the ``stored`` cursors of the partitions in ``held``: per partition,
    and per event type."""
    floors: dict[int, tuple[int, int]] = {}
    per_type: dict[str, tuple[int, int]] = {}
    for (event_type, partition), key in stored.items():
        if partition in held:
            floors[partition] = min(key, floors.get(partition, key))
            per_type[event_type] = min(key, per_type.get(event_type, key))
    return floors, per_type


def _all(partitions: frozenset[int] | None) -> frozenset[int]:
    """``partitions``, None standing for all of them."""
    return frozenset(range(PARTITION_COUNT)) if partitions is None else partitions


def _intersect(a: frozenset[int] | None, b: frozenset[int] | None) -> frozenset[int] | None:
    """Partitions in both sets, None standing for all of them."""
    if a is None:
        return b
    return a if b is None else a & b
