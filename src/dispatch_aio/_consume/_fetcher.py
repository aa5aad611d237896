"""The fetcher: one snapshot-aware read (ADR 0006), handed to the scheduler.

Its whole interface to the rest of the consumer is :meth:`Fetcher.read` and
:meth:`Fetcher.read_replays` (on a connection the caller holds), the scheduler's
``read`` / ``pull`` / ``add`` verbs and its marks' ``at_cap`` / ``set_bound``.
Committed events are handed out as soon as they are read, whatever transactions are
still open; a :class:`~.horizon.Stream` remembers the ids in progress that the read
passed, reads their rows when they end, and gives the scheduler the bound its stored
cursors must stay below.
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
from ._items import Item
from ._scheduler import Scheduler
from .assignment import PARTITION_COUNT
from .horizon import Key, Stream
from .streams_store import StreamsStore, partition_mask

__all__ = ["Fetcher", "ReadResult", "RowKeys"]

_ALL = frozenset(range(PARTITION_COUNT))
#: Rows counted per type when a member counts what it has yet to read.
UNREAD_LIMIT = 10_000
#: Catch-up streams at most; a gain beyond joins the newest from the lower mark.
_MAX_CATCHUPS = 8


@dataclass(slots=True, frozen=True)
class _Reading:
    """A stream and the partitions it reads (its read's filter)."""

    stream: Stream
    partitions: frozenset[int]
    mask: bytes | None

    @classmethod
    def of(cls, stream: Stream, partitions: frozenset[int]) -> _Reading:
        every = len(partitions) == PARTITION_COUNT
        return cls(stream, partitions, partition_mask(None if every else partitions))


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
        #: What is read: the main stream first (a single process reads every partition
        #: with no filter); then, for partitions gained while it ran, catch-up streams
        #: from their stored cursors, each until it and the main one catch up in one read
        #: (ADR 0006). The main stream reads nothing until the member task has leases.
        self._readings = [_Reading.of(Stream(frontier=start), frozenset())]
        #: Bumped by every restart: a read that was on the wire meanwhile is dropped.
        self._generation = 0
        self._scheduler = scheduler
        self._batch_size = batch_size
        self._limit = batch_size
        self._on_dedup_hit = on_dedup_hit
        #: Builds a row's Event (the group runner calls it right before the handler).
        self.decode = EventDecoder(registry, payload_models or {})

    @property
    def stream(self) -> Stream:
        """The main stream."""
        return self._readings[0].stream

    async def read(self, conn: asyncpg.Connection) -> ReadResult:
        """Read the next batch on ``conn`` (one statement, in a read-only transaction)."""
        scheduler = self._scheduler
        readings = self._readings
        if not readings[0].partitions:
            return ReadResult(False, False, 0)  # no lease held here (yet)
        if scheduler.marks.at_cap():
            # A type holds its cap of events behind a head without an outcome.
            return ReadResult(False, self._watching(), 0)
        # A full batch means a backlog: read ahead in bigger steps (up to the buffer),
        # which the streams share.
        limit = max(self._batch_size, self._limit // len(readings))
        generation = self._generation
        result = await self._streams.fetch(
            conn, [(r.stream.plan(), r.mask) for r in readings], limit
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
        for reading, got in zip(readings, result.streams, strict=True):
            for row in got.pulled:
                pull(row, make)
            for rows in (got.watched_rows, got.range_rows or ()):
                for row in rows:
                    if read(row, make):
                        hits += 1
                        if on_hit is not None:
                            on_hit(row["event_type"])
            range_rows = got.range_rows
            reading.stream.advance(
                result.snapshot,
                RowKeys(got.watched_rows),
                None if range_rows is None else RowKeys(range_rows),
                limit,
            )
        full = any(not r.stream.caught_up for r in readings)
        if len(readings) > 1:
            self._merge()
        scheduler.marks.set_bound(self.low_water())
        room = max(self._batch_size, scheduler.marks.cap - len(scheduler.inflight))
        self._limit = room if full else self._batch_size
        return ReadResult(full, self._watching(), hits)

    async def unread(self, conn: asyncpg.Connection) -> dict[int, int]:
        """Rows the main stream has yet to read, per partition (at most
        :data:`UNREAD_LIMIT` per type counted); empty once it has caught up.

        What a member of a group reports is what it holds, read or not: counting only
        what was read, every member with a backlog longer than its buffer looks as loaded
        as its buffer is long, and none gives any of it away.
        """
        main = self._readings[0]
        if main.stream.caught_up or not main.partitions:
            return {}
        return await self._streams.unread(conn, main.stream.frontier, main.mask, UNREAD_LIMIT)

    def _merge(self) -> None:
        """Catch-up streams that caught up with the main one in the last read join it."""
        main, *rest = self._readings
        left = []
        for reading in rest:
            if main.stream.can_merge(reading.stream):
                main.stream.merge(reading.stream)
                main = _Reading.of(main.stream, main.partitions | reading.partitions)
            else:
                left.append(reading)
        self._readings = [main, *left]

    def low_water(self) -> Key:
        """Below every row not read yet and every id in progress, over every stream."""
        return min(r.stream.low_water() for r in self._readings)

    def _watching(self) -> bool:
        """Transactions a stream passed are still open (the stored cursor waits)."""
        return any(r.stream.watched for r in self._readings)

    @property
    def partitions(self) -> frozenset[int] | None:
        """The partitions read now (None: all)."""
        held = self._held()
        return None if len(held) == PARTITION_COUNT else held

    def _held(self) -> frozenset[int]:
        """Every partition a stream reads."""
        return frozenset().union(*(r.partitions for r in self._readings))

    def restart(
        self,
        partitions: frozenset[int] | None,
        start: Key | None,
        floors: Mapping[int, Key] | None = None,
    ) -> None:
        """Read ``partitions`` (None: all); those gained from ``start`` on.

        ``start`` must be the gained partitions' lowest stored cursor or lower (ADR 0006:
        a restart from a cursor loses nothing; rows read again are skipped by their
        markers). Partitions kept go on where their stream is. Partitions gained are read
        by a catch-up stream of their own, in the same statement as the others, until it
        and the main stream catch up in one read and merge: a gain re-reads what the
        gained partitions hold above their cursors, nothing of the rest. Without ``start``
        partitions only leave: one not read yet is left for the restart that brings its
        cursor. ``floors``: the gained partitions' own stored cursors, if ``start`` is the
        lowest of them; their rows at or below are not read again. A read on the wire
        meanwhile is dropped when it returns.
        """
        self._generation += 1
        wanted = _ALL if partitions is None else partitions
        held = self._held()
        readings = [
            _Reading.of(r.stream, r.partitions & wanted)
            for r in self._readings
            if r.partitions & wanted
        ]
        gained = wanted - held if start is not None else frozenset()
        if gained:
            assert start is not None
            own = {p: key for p, key in (floors or {}).items() if p in gained}
            if len(readings) > _MAX_CATCHUPS:
                # Many gains in a row: the newest catch-up takes this one too, from the
                # lower of the two marks. Its partitions' rows up to its own mark were
                # read here (done, or held by the scheduler): their floor.
                last = readings.pop()
                mark = last.stream.low_water()
                for p in last.partitions:
                    own[p] = max(last.stream.floors.get(p, mark), mark)
                start = min(start, mark)
                gained |= last.partitions
            stream = Stream(frontier=start)
            stream.floors = {p: key for p, key in own.items() if key > start}
            readings.append(_Reading.of(stream, gained))
        # With the main stream's partitions all gone, the oldest catch-up is the main one.
        self._readings = readings or [_Reading.of(self.stream, frozenset())]

    def reset(
        self, partitions: frozenset[int] | None, start: Key, floors: Mapping[int, Key]
    ) -> None:
        """Forget every stream: read ``partitions`` (None: all) again from ``start``, the
        lowest of their stored cursors (``floors``: each one's own; rows at or below are
        not read again).

        For a server that may have restarted since the streams last read: crash recovery
        hands out again the ids of transactions whose end never reached the disk, so ids
        a stream passed as over may commit rows below its frontier. A stored cursor is
        below every such id (ADR 0006). A read on the wire meanwhile is dropped.
        """
        # Nothing held: every partition is gained, from ``start``, by one new stream.
        self._readings = [_Reading.of(Stream(frontier=start), frozenset())]
        self.restart(partitions, start, floors)

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
        # Positional (position, xid, event_id, event_type, subject, row, attempts,
        # partition): once per row read, at half the cost of keywords.
        return Item(
            row["position"],
            row["xid"],
            row["event_id"],
            row["event_type"],
            row["subject"],
            row,
            row["attempts"] or 0,
            row.get("partition", -1),
        )
