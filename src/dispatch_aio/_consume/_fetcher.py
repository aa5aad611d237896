"""The fetcher: one snapshot-aware read (ADR 0006), handed to the scheduler.

Its whole interface to the rest of the consumer is :meth:`Fetcher.read` and
:meth:`Fetcher.read_replays` (on a connection the caller holds) and the scheduler's
``at_cap`` / ``read`` / ``pull`` / ``add`` / ``set_bound`` verbs. Committed events are
handed out as soon as they are read, whatever transactions are still open; a
:class:`~.horizon.Stream` remembers the ids in progress that the read passed, reads
their rows when they end, and gives the scheduler the bound its stored cursors must
stay below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import asyncpg

from .._registry import Registry
from .._storage._consumer_store import ConsumerStore
from .._typed import PayloadModel
from ._codec import EventDecoder
from ._scheduler import Item, Scheduler
from .assignment import PARTITION_COUNT
from .horizon import Key, Stream
from .streams_store import StreamsStore, partition_mask

__all__ = ["Fetcher", "ReadResult", "RowKeys"]

_ALL = frozenset(range(PARTITION_COUNT))


class RowKeys(Sequence[Key]):
    """The ``(xid, position)`` keys of rows, each made when asked for.

    :meth:`~.horizon.Stream.advance` looks at a read's length and its last key only: a
    list of every key would be thousands of tuples per read of a backlog, made and
    freed again at once.
    """

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[Any]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Key: ...

    @overload
    def __getitem__(self, index: slice) -> list[Key]: ...

    def __getitem__(self, index: int | slice) -> Key | list[Key]:
        if isinstance(index, slice):
            return [(r["xid"], r["position"]) for r in self._rows[index]]
        row = self._rows[index]
        return (row["xid"], row["position"])


@dataclass(frozen=True, slots=True)
class ReadResult:
    """What one read found."""

    #: The batch was full: more is probably waiting; read again at once.
    full: bool
    #: Transactions the read passed are still open: the stored cursor waits below them
    #: (their events are read when they end; nothing else waits for them).
    cursor_held: bool
    #: Events that already had this consumer's outcome (another process finished them).
    dedup_hits: int


class Fetcher:
    """Reads events for a scheduler, each into an :class:`Item` (decoded when it runs)."""

    def __init__(
        self,
        store: ConsumerStore,
        scheduler: Scheduler,
        registry: Registry,
        *,
        streams: StreamsStore,
        start: Key,
        batch_size: int,
        on_dedup_hit: Callable[[str], None] | None = None,
        payload_models: Mapping[str, PayloadModel] | None = None,
    ) -> None:
        self._store = store
        self._streams = streams
        #: The main stream (a single process reads every partition, with no filter).
        self.stream = Stream(frontier=start)
        #: Partitions the main stream reads. Empty until the member task has leases.
        self._main: frozenset[int] = frozenset()
        self._mask: bytes | None = partition_mask(())
        #: Partitions gained while the main stream ran, read from their stored cursors
        #: by a stream of their own until both catch up in one read (ADR 0006).
        self._catchup: Stream | None = None
        self._caught: frozenset[int] = frozenset()
        self._catchup_mask: bytes | None = None
        #: Bumped by every restart: a read that was on the wire meanwhile is dropped.
        self._generation = 0
        self._scheduler = scheduler
        self._batch_size = batch_size
        self._limit = batch_size
        self._on_dedup_hit = on_dedup_hit
        #: Builds a row's Event (the group runner calls it right before the handler).
        self.decode = EventDecoder(registry, payload_models or {})

    async def read(self, conn: asyncpg.Connection) -> ReadResult:
        """Read the next batch on ``conn`` (one statement, in a read-only transaction)."""
        scheduler = self._scheduler
        if not self._main:
            return ReadResult(False, False, 0)  # no lease held here (yet)
        if scheduler.at_cap():
            # A type holds its cap of events behind a head without an outcome.
            return ReadResult(False, self._watching(), 0)
        # A full batch means a backlog: read ahead in bigger steps (up to the buffer).
        streams = [(self.stream, self._mask)]
        catchup = self._catchup
        if catchup is not None:
            streams.append((catchup, self._catchup_mask))
        # Each stream reads up to the limit: two share the room one would have.
        limit = max(self._batch_size, self._limit // len(streams))
        generation = self._generation
        result = await self._streams.fetch(
            conn, [(stream.plan(), mask) for stream, mask in streams], limit
        )
        if generation != self._generation:
            # Partitions changed hands while this read was on the wire. Its rows may
            # belong to partitions this process no longer holds, and its snapshot speaks
            # for a stream that was replaced: applied, it would raise the scheduler's
            # bound over a gained partition's events not yet read, and that partition's
            # stored cursor with it (a later owner would start past them: lost, or
            # handled after their subject's later events). Drop it; read again at once.
            return ReadResult(True, self._watching(), 0)
        make = self._make_item
        pull = scheduler.pull
        read = scheduler.read
        on_hit = self._on_dedup_hit
        hits = 0
        for (stream, _), got in zip(streams, result.streams, strict=True):
            for row in got.pulled:
                pull(row, make)
            for rows in (got.watched_rows, got.range_rows or ()):
                for row in rows:
                    if read(row, make):
                        hits += 1
                        if on_hit is not None:
                            on_hit(row["event_type"])
            range_rows = got.range_rows
            stream.advance(
                result.snapshot,
                RowKeys(got.watched_rows),
                None if range_rows is None else RowKeys(range_rows),
                limit,
            )
        if catchup is not None and self.stream.can_merge(catchup):
            # Both caught up in this read: one stream reads them all from now on.
            self.stream.merge(catchup)
            self._set_main(self._main | self._caught)
            self._set_catchup(None, frozenset())
        scheduler.set_bound(self.low_water())
        scheduler.advance()
        full = any(not stream.caught_up for stream, _ in streams)
        room = max(self._batch_size, scheduler.max_buffered - len(scheduler.inflight))
        self._limit = room if full else self._batch_size
        return ReadResult(full, self._watching(), hits)

    def low_water(self) -> Key:
        """Below every row not read yet and every id in progress, over both streams."""
        mark = self.stream.low_water()
        if self._catchup is not None:
            mark = min(mark, self._catchup.low_water())
        return mark

    def _watching(self) -> bool:
        """Transactions a stream passed are still open (the stored cursor waits)."""
        return bool(self.stream.watched) or (
            self._catchup is not None and bool(self._catchup.watched)
        )

    @property
    def partitions(self) -> frozenset[int] | None:
        """The partitions read now (None: all)."""
        held = self._main | self._caught
        return None if len(held) == PARTITION_COUNT else held

    def restart(self, partitions: frozenset[int] | None, start: Key | None) -> None:
        """Read ``partitions`` (None: all); those gained from ``start`` on.

        ``start`` must be the gained partitions' lowest stored cursor or lower (ADR 0006:
        a restart from a cursor loses nothing; rows read again are skipped by their
        markers). Partitions kept go on where their stream is; partitions gained are read
        by a catch-up stream of their own (with the main stream, in the same statement)
        until both catch up in one read and merge, so a gain re-reads only what the gained
        partitions have above their cursors. Without ``start`` only partitions may leave.
        A read on the wire meanwhile is dropped when it returns.
        """
        self._generation += 1
        wanted = _ALL if partitions is None else partitions
        main = self._main & wanted
        caught = self._caught & wanted
        gained = wanted - self._main - self._caught
        if start is None:
            # Only leaving. A partition not read yet waits for the restart that brings
            # its stored cursor (read from here, it would skip its rows below).
            gained = frozenset()
        if not main and caught:
            # The main stream has nothing left: the catch-up stream is the main one now.
            assert self._catchup is not None
            self.stream, main, caught = self._catchup, caught, frozenset()
            self._set_catchup(None, frozenset())
        if gained:
            assert start is not None
            if not main:
                self.stream, main = Stream(frontier=start), gained
            elif caught and self._catchup is not None:
                # Gained again before the last gain caught up: one catch-up for both.
                self._catchup = Stream(frontier=min(self._catchup.low_water(), start))
                caught = caught | gained
            else:
                self._catchup, caught = Stream(frontier=start), gained
        self._set_main(main)
        self._set_catchup(self._catchup if caught else None, caught)

    def _set_main(self, partitions: frozenset[int]) -> None:
        self._main = partitions
        self._mask = partition_mask(None if len(partitions) == PARTITION_COUNT else partitions)

    def _set_catchup(self, stream: Stream | None, partitions: frozenset[int]) -> None:
        self._catchup = stream
        self._caught = partitions
        self._catchup_mask = partition_mask(partitions) if stream is not None else None

    async def read_replays(self, conn: asyncpg.Connection) -> None:
        """Queue the dead letters waiting to be replayed, each on a lane of its own."""
        scheduler = self._scheduler
        for row in await self._store.fetch_replays(conn, self._batch_size):
            dead_letter_id = row["dead_letter_id"]
            if not scheduler.begin_replay(dead_letter_id, row["replay_requested_at"]):
                continue
            item = self._make_item(row)
            # Decoded now: a replay that still cannot be decoded fails as a replay (the
            # group runner looks before running it), not as a new dead letter.
            item.event = self.decode.item_event(item)
            item.replay_of = dead_letter_id
            item.isolate = True
            # A replay is outside the subject's order: it runs on a lane of its own.
            item.subject = f"\x00replay:{dead_letter_id}"
            scheduler.add(item, track=False)

    def _make_item(self, row: Any) -> Item:
        # Not decoded here: the group runner builds the Event right before its handler
        # runs (see EventDecoder), and dead-letters the row then if it cannot.
        return Item(
            position=row["position"],
            xid=row["xid"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            subject=row["subject"],
            row=row,
            attempts=row["attempts"] or 0,
            partition=row.get("partition", -1),
        )
