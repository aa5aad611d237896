"""Reading above the transaction horizon: what to read next, what to watch, where the
cursor may move. Pure (no I/O); the design and its proof are ADR 0006.

A :class:`Stream` is the subscribed event types over one set of partitions, read in
``(xid, position)`` order. It remembers

- ``frontier``: every row at or below it was read, except rows of watched ids;
- ``watched``: ids that were in progress when the frontier passed them, the only ones
  that can still commit rows below it;
- ``drain``: for watched ids whose rows exceeded one batch, the last position read.

Each read (``consumer_fetch_streams``) returns the rows of watched ids that have ended
(kind 0) and, when those did not fill the batch, the rows above the frontier (kind 1),
with the statement's own snapshot. :meth:`Stream.advance` folds that in. Every row read
is committed and may run as soon as the earlier events of its subject have outcomes;
only :meth:`Stream.low_water`, the stored cursor, must stay below every id in progress.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Key", "ReadPlan", "Snapshot", "Stream"]

#: ``(xid, position)``: the read order of events.
Key = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """``pg_current_snapshot()`` of one read: ids ``>= xmax`` or in ``xip`` were running."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def of(cls, xmin: int, xmax: int, xip: Iterable[int]) -> Snapshot:
        """Build from the three values the read returns."""
        return cls(xmin, xmax, frozenset(xip))

    def running(self, xid: int) -> bool:
        """Whether ``xid`` could still commit rows after this snapshot."""
        return xid >= self.xmax or xid in self.xip


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The parameters of one stream's next read."""

    frontier: Key
    #: ``(xid, position)``: read the rows of ``xid`` above ``position`` (0: all of them).
    watched: tuple[Key, ...]
    #: ``(partition, key)``: that partition's rows at or below ``key`` are not read.
    floors: tuple[tuple[int, Key], ...] = ()


@dataclass(slots=True)
class Stream:
    """Read state of one partition set; starts at a stored cursor (``frontier``)."""

    frontier: Key
    watched: set[int] = field(default_factory=set)
    drain: dict[int, int] = field(default_factory=dict)
    #: The last read returned everything visible to its snapshot (no batch was full).
    caught_up: bool = False
    #: ``xmax`` of the last read's snapshot.
    seen_xmax: int = 0
    #: Partitions' own stored cursors, when the stream starts at the lowest of several
    #: (a catch-up of partitions gained): their rows at or below are not read again.
    floors: dict[int, Key] = field(default_factory=dict)

    def plan(self) -> ReadPlan:
        """What the next read must ask for."""
        return ReadPlan(
            self.frontier,
            tuple((x, self.drain.get(x, 0)) for x in sorted(self.watched)),
            tuple(sorted(self.floors.items())),
        )

    def advance(
        self,
        snapshot: Snapshot,
        watched_rows: Sequence[Key],
        range_rows: Sequence[Key] | None,
        limit: int,
    ) -> None:
        """Fold in one read: its snapshot, and the keys of its kind 0 and kind 1 rows.

        ``watched_rows`` and ``range_rows`` are in ``(xid, position)`` order;
        ``range_rows`` is None when the read skipped the range (kind 0 was full).
        Pulled rows (kind 2) do not move anything here.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.seen_xmax = max(self.seen_xmax, snapshot.xmax)
        ended = {x for x in self.watched if not snapshot.running(x)}
        if len(watched_rows) >= limit:
            # The batch ended inside the rows of ended ids: ids before the last row's are
            # done; the last row's id goes on from that row; later ones wait their turn.
            # An id still running below it keeps its place: it may end later.
            last_xid, last_position = watched_rows[-1]
            self._forget({x for x in ended if x < last_xid})
            self.drain[last_xid] = last_position
            self.caught_up = False
            return
        self._forget(ended)
        rows = range_rows or ()
        if len(watched_rows) + len(rows) >= limit and rows:
            self.frontier = max(self.frontier, rows[-1])
            self.caught_up = False
        else:
            # Everything visible was read: every id below xmax has been looked at.
            self.frontier = max(self.frontier, (snapshot.xmax, 0))
            self.caught_up = True
            # Below the frontier now, and below every id still watched (a stored cursor
            # was below every id in progress then): they filter nothing any more.
            self.floors.clear()
        # Ids still running that the frontier has passed: only they can add rows below it.
        self.watched |= {x for x in snapshot.xip if x <= self.frontier[0]}

    def _forget(self, done: set[int]) -> None:
        self.watched -= done
        for xid in done:
            self.drain.pop(xid, None)

    def low_water(self, first_unfinished: Key | None = None) -> Key:
        """Where a partition's stored cursor may be: below every unfinished event of the
        partition (``first_unfinished``, the smallest key read without an outcome), below
        every watched id's rows not read yet, and not above the frontier.

        A watched id being drained (``drain``) has ended, every one of its rows is visible,
        and those up to the drained position were read: the mark may stand there, not
        below all of its rows.
        """
        mark = self.frontier
        if self.watched:
            mark = min(mark, min((x, self.drain.get(x, 0)) for x in self.watched))
        if first_unfinished is not None:
            mark = min(mark, (first_unfinished[0], first_unfinished[1] - 1))
        return mark

    def can_merge(self, other: Stream) -> bool:
        """Whether ``other`` can join this stream: both caught up in one read (the same
        snapshot), so both frontiers are that snapshot's ``(xmax, 0)``."""
        return (
            self.caught_up
            and other.caught_up
            and not self.drain
            and not other.drain
            and self.frontier == other.frontier
        )

    def merge(self, other: Stream) -> None:
        """Take ``other`` in (see :meth:`can_merge`): one read then serves both sets."""
        if not self.can_merge(other):
            raise ValueError("streams can merge only when both caught up in the same read")
        self.watched |= other.watched
