"""Per-type low-water marks (ADR 0006): where each event type's stored cursor may be.

For each event type a :class:`~._items.TypeCursor` holds the events read without an
outcome, in (xid, position) order, and three keys: the largest read, the committed
cursor (what may be stored) and the one stored. The committed cursor is the smaller of
the reader's bound (:attr:`TypeMarks.bound`: below every id still in progress, and no
unread row at or below it) and just below the first unfinished event, and it never
moves backwards except when the read starts again from lower down
(:meth:`TypeMarks.restart`). Pure: no I/O, no asyncio; the scheduler owns one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._items import Item, TypeCursor

__all__ = ["TypeMarks"]


class TypeMarks:
    """The low-water marks of every event type a consumer reads; see the module doc."""

    def __init__(self, cursors: Mapping[str, tuple[int, int]], cap: int) -> None:
        #: Events one type may hold before reading pauses (see :meth:`at_cap`).
        self.cap = cap
        self.cursors = {
            t: TypeCursor(read=c, committed=c, flushed=c, start=c) for t, c in cursors.items()
        }
        #: The reader's low-water mark over every type (below every id in progress).
        self.bound: tuple[int, int] | None = None

    # -- holding -----------------------------------------------------------------------

    def at_cap(self) -> bool:
        """Some type holds :attr:`cap` events behind a head without an outcome.

        A stuck head keeps every later event of its type in memory until it has an
        outcome; one read serves every type (ADR 0006), so reading pauses for all of
        them: that bounds the memory, whatever waits behind the head.
        """
        return self.held() >= self.cap

    def held(self) -> int:
        """The most events one type holds (finished ones behind an unfinished head too)."""
        return max((len(c.pending) for c in self.cursors.values()), default=0)

    # -- moving and storing ------------------------------------------------------------

    def set_bound(self, bound: tuple[int, int]) -> None:
        """The reader's low-water mark: no id in progress, no unread row, at or below it.
        Every type's committed cursor moves as far as that and its events allow."""
        self.bound = bound
        self.advance_all()

    def advance_all(self) -> None:
        """Move every type's committed cursor over its prefix of finished events."""
        for cursor in self.cursors.values():
            self.advance(cursor)

    def advance(self, cursor: TypeCursor) -> None:
        """Move ``cursor``'s committed key over its prefix of finished events."""
        pending = cursor.pending
        while pending and pending[0].done:
            pending.popleft()
        mark = self.read_mark(cursor)
        if pending:
            head = pending[0]
            mark = min(mark, (head.xid, head.position - 1))
        if mark > cursor.committed:
            cursor.committed = mark

    def moved(self) -> dict[str, tuple[int, int]]:
        """Committed cursors not stored yet."""
        return {t: c.committed for t, c in self.cursors.items() if c.committed > c.flushed}

    def flushed(self, moved: Mapping[str, tuple[int, int]]) -> None:
        """``moved`` (from :meth:`moved`) is stored."""
        for event_type, value in moved.items():
            self.cursors[event_type].flushed = value

    def read_mark(self, cursor: TypeCursor) -> tuple[int, int]:
        """The type's mark before its events without an outcome: the reader's bound, not
        above the last row of the type read. Every row of the type between the two was
        read, so both say the same, and a real row's key is what status, retention and
        the horizon check at start expect (the bound's may be xmax)."""
        return cursor.read if self.bound is None else min(self.bound, cursor.read)

    # -- partitions --------------------------------------------------------------------

    def partition_marks(
        self, inflight: Iterable[Item], partitions: set[int]
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """Where the stored cursor of each (type, partition) of ``partitions`` may be now:
        below each of their events in ``inflight`` (read, no outcome yet), and not above
        the type's own mark before any other event (the reader's bound, the last row read).

        For partitions that stop being read here (handed over): their next owner starts
        there, so it reads again only what has no outcome yet, not everything since the
        type's mark, which waits for the slowest partition held.
        """
        firsts: dict[tuple[str, int], tuple[int, int]] = {}
        for item in inflight:
            if item.partition in partitions:
                key = (item.event_type, item.partition)
                below = (item.xid, item.position - 1)
                if key not in firsts or below < firsts[key]:
                    firsts[key] = below
        marks: dict[tuple[str, int], tuple[int, int]] = {}
        for event_type, cursor in self.cursors.items():
            base = self.read_mark(cursor)
            for partition in partitions:
                first = firsts.get((event_type, partition))
                marks[(event_type, partition)] = base if first is None else min(base, first)
        return marks

    def restart(
        self, start: tuple[int, int], stored: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        """Partitions gained are read from ``start``: cursors follow from there.

        The largest key read stays: the rows below it that are read again (the gained
        partitions') are held back by the bound, which the reader raises as it reads
        them; the partitions read before are not read again to raise it once more.
        ``stored``: each type's stored cursor as read again now, which a server crash
        may have taken back (one stored without waiting for the disk): rows above it are
        not taken as done before the start any more.
        """
        for event_type, cursor in self.cursors.items():
            cursor.committed = cursor.flushed = min(cursor.committed, start)
            if stored is not None and event_type in stored:
                cursor.start = min(cursor.start, stored[event_type])
        self.bound = start
