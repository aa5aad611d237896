"""The scheduler: the one owner of every in-flight event's state. Pure: no I/O, no asyncio.

What it holds:

- **per-subject queues**: events of one subject, in position (commit) order; only the
  head of a subject runs, and a subject runs in one group at a time (``busy``);
- the **ready queue**: subjects whose head can run now (the longest of the first few
  goes first);
- **per-type low-water marks** (ADR 0006), in :attr:`~Scheduler.marks`
  (:class:`~._marks.TypeMarks`): for each event type, the events read without an
  outcome, and where its stored cursor may be;
- the **retry heap**: subjects parked until their head's retry is due, on an injectable
  clock;
- the **in-flight** set (read, no outcome yet) and the **recently done** set (so that a
  read overlapping an earlier one does not run an event twice); for replays, the same
  pair keyed by dead letter (a read of pending replays that overlaps a replay's commit
  does not run it twice either).

Its verbs: :meth:`~Scheduler.read` and :meth:`~Scheduler.pull` (the fetcher hands over
what it read), :meth:`~Scheduler.take_subject` and :meth:`~Scheduler.take_more` (a
group starts with one subject and takes more as it gets through them),
:meth:`~Scheduler.complete`,
:meth:`~Scheduler.requeue`, :meth:`~Scheduler.retry`, :meth:`~Scheduler.dead_letter`,
:meth:`~Scheduler.release` (the group runner reports back) and :meth:`~Scheduler.due`
(the retry clock). Every outcome is one of :class:`Outcome`.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._items import (
    Item,
    Outcome,
    SubjectQueue,
    by_position,
    hold,
    joins,
    take_head,
)
from ._marks import TypeMarks

__all__ = ["Scheduler"]

_RECENT_LIMIT = 4096


#: How far into the ready queue the next subject is looked for (see Scheduler._choose).
_WINDOW = 16
#: Events a group takes at least per step while it grows (see Scheduler.take_more).
_STEP = 8


class Scheduler:
    """Per-subject queues, ready queue, low-water marks, retry heap; see the module doc.

    ``on_ready`` is called each time a subject joins the ready queue (the consumer wakes
    a worker there), ``on_retry`` each time a retry is scheduled (the retry clock looks
    again). ``clock`` gives monotonic seconds (the retry heap's time).
    """

    def __init__(
        self,
        cursors: dict[str, tuple[int, int]],
        *,
        workers: int = 1,
        max_group: int = 200,
        max_buffered: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        on_ready: Callable[[], None] | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.workers = max(1, workers)
        self.max_group = max_group
        self.clock = clock
        self._on_ready = on_ready
        self._on_retry = on_retry
        #: Where each type's stored cursor may be; the fetcher, the read loop and the
        #: hand-over read and move it (reads pause while a type holds ``max_buffered``).
        self.marks = TypeMarks(cursors, max_buffered)
        self.subjects: dict[str, SubjectQueue] = {}
        self.ready: collections.deque[str] = collections.deque()
        self.inflight: dict[int, Item] = {}
        #: Replays in flight: dead-letter id -> the request being run (see begin_replay).
        self.replays: dict[str, Any] = {}
        self._replayed: collections.OrderedDict[tuple[str, Any], None] = collections.OrderedDict()
        self._recent: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._retry_heap: list[tuple[float, int, str]] = []
        #: How many times in a row the oldest ready subject was passed over (_choose).
        self._passed = 0
        self._retry_seq = 0

    # -- what the fetcher hands over ---------------------------------------------------

    def read(self, row: Any, make: Callable[[Any], Item]) -> bool:
        """Take an event read; True when it was already done (dedup hit).

        ``row`` has ``event_type``, ``xid``, ``position`` and ``handled``; ``make(row)``
        builds the item (decoding is only paid for events that will run).
        """
        xid, position = row["xid"], row["position"]
        cursor = self.marks.cursors[row["event_type"]]
        key = (xid, position)
        if key > cursor.read:
            cursor.read = key
        if key <= cursor.start:
            # One read serves every type from the lowest stored cursor: this type's own
            # cursor had passed this row (its outcome was recorded) before we started.
            return False
        if row["handled"]:
            return True
        if position in self.inflight or position in self._recent:
            return False
        item = make(row)
        hold(cursor.pending, item)
        self.add(item)
        return False

    def pull(self, row: Any, make: Callable[[Any], Item]) -> None:
        """Take an event read ahead of its turn (to keep its subject's order)."""
        position = row["position"]
        if row["handled"] or position in self.inflight or position in self._recent:
            return
        item = make(row)
        cursor = self.marks.cursors.get(item.event_type)
        if cursor is not None:
            hold(cursor.pending, item)
        self.add(item)

    def add(self, item: Item, *, track: bool = True) -> None:
        """Queue an event behind the earlier ones of its subject."""
        if track:
            self.inflight[item.position] = item
        subject = self.subjects.get(item.subject)
        if subject is None:
            subject = self.subjects[item.subject] = SubjectQueue()
        items = subject.items
        # Reads come in position order: the new event usually goes last, and appending it
        # spares the search (whose key is a Python call per step).
        if not items or items[-1].position < item.position:
            items.append(item)
        else:
            bisect.insort(items, item, key=by_position)
        if subject.busy:
            if subject.posted is not None:
                subject.posted.append(item.subject)  # its running group may take it
        elif not (subject.parked or subject.queued):
            self._mark_ready(item.subject, subject)

    def begin_replay(self, dead_letter_id: str, requested: Any = None) -> bool:
        """Claim a replay request; False when it is in flight or finished here lately.

        ``requested`` tells one dead letter's requests apart (its ``replay_requested_at``):
        a replay that failed may be asked for again, and that new request runs. A read
        that found a request pending before its replay committed, answered once the
        replay finished here, finds the same request and is refused.
        """
        if dead_letter_id in self.replays or (dead_letter_id, requested) in self._replayed:
            return False
        self.replays[dead_letter_id] = requested
        return True

    def end_replay(self, dead_letter_id: str, *, recorded: bool = True) -> None:
        """A replay is over; ``recorded`` when its outcome committed.

        A recorded request is remembered (the last few thousand), so that a read still
        on the wire does not queue it again. One whose outcome could not be recorded is
        still pending in the database: a later read runs it again.
        """
        if dead_letter_id not in self.replays:
            return
        requested = self.replays.pop(dead_letter_id)
        if recorded:
            finished = self._replayed
            finished[(dead_letter_id, requested)] = None
            if len(finished) > _RECENT_LIMIT:
                finished.popitem(last=False)

    # -- what the group runner reports -------------------------------------------------

    def fair_limit(self) -> int:
        """Events per group: ``max_group``, or a fair share of what is waiting."""
        return min(self.max_group, max(1, math.ceil(len(self.inflight) / self.workers)))

    def take_subject(self, posted: list[str] | None = None) -> list[Item]:
        """The queued events of the next ready subject (up to ``max_group``), to start a
        group; empty when nothing is ready. An isolated event comes alone.

        A group is given its subjects as it gets through them (:meth:`take_more`), not a
        share fixed up front: a share fixed up front leaves one worker waiting through
        the longest subjects while the others are done (a drain ends when its busiest
        worker does); a subject given just in time goes to a worker that is free.
        ``posted`` is the group's mailbox: the subjects it holds that get events read
        meanwhile are appended to it (see :meth:`take_more`).
        """
        index = self._choose(True)
        if index < 0:
            return []
        subject = self._pop_ready(index, posted)
        items = subject.items
        if items[0].isolate:
            return [items.pop(0)]
        group: list[Item] = []
        cap = self.max_group
        while items and len(group) < cap and not items[0].isolate:
            group.append(items.pop(0))
        return group

    def take_more(self, size: int, posted: list[str]) -> list[Item]:
        """More events for a running group that holds ``size`` and has run them all.

        ``posted`` is the mailbox the group's subjects were taken with. While the group
        is below :meth:`fair_limit`: first the events read since for one of its own
        subjects (they follow the ones it ran, so its order holds, and they need not wait
        for its commit); else the queued events of ready subjects, the first of them
        chosen as :meth:`_choose` says, the next ones in order until the step holds
        ``_STEP`` events (subjects of one or two queued events would otherwise cost a
        call each). Never an event that must run alone or first settle a commit in
        doubt (a group of its own does that). Committing once per fair share keeps a
        backlog's commits as few as a group taken whole would make.
        """
        limit = self.fair_limit()
        if size >= limit:
            return []
        room = self.max_group - size
        while posted:
            subject = self.subjects.get(posted.pop())
            if subject is not None and subject.busy and subject.posted is posted:
                taken = take_head(subject.items, room)
                if taken:
                    return taken
        taken = []
        while len(taken) < _STEP and size + len(taken) < limit:
            index = self._choose(not taken)
            if index < 0 or not joins(self.subjects[self.ready[index]].items[0]):
                break
            taken += take_head(self._pop_ready(index, posted).items, room - len(taken))
        return taken

    def requeue(self, items: Iterable[Item]) -> None:
        """Put events back at their place in their subjects (to run in a later group)."""
        for item in items:
            subject = self.subjects.get(item.subject)
            if subject is None:
                subject = self.subjects[item.subject] = SubjectQueue()
            bisect.insort(subject.items, item, key=by_position)

    def retry(self, item: Item, delay: float) -> None:
        """Put ``item`` back and park its subject for ``delay`` seconds."""
        self.requeue([item])
        subject = self.subjects[item.subject]
        subject.parked = True
        self._retry_seq += 1
        heapq.heappush(self._retry_heap, (self.clock() + delay, self._retry_seq, item.subject))
        if self._on_retry is not None:
            self._on_retry()

    def dead_letter(self, item: Item, row: Any) -> None:
        """Put ``item`` back to be dead-lettered (with ``row``) by the next group."""
        item.dead_letter = row
        item.isolate = True
        self.requeue([item])

    def complete(self, item: Item, outcome: Outcome) -> None:
        """``item`` has its outcome: it leaves the in-flight set; cursors may move."""
        if item.replay_of is not None:
            # Replayed, failed again, or found finished elsewhere: the request is over.
            item.done = True
            item.row = item.event = item.dead_letter = None
            self.end_replay(item.replay_of)
            subject = self.subjects.get(item.subject)
            if subject is not None and not subject.items and not subject.busy:
                del self.subjects[item.subject]
            return
        self.complete_handled([item])

    def complete_handled(self, items: list[Item]) -> None:
        """:meth:`complete` for each of ``items``, none of them a replay.

        One call per group: each type's cursor moves once, after all of them.
        """
        inflight, recent = self.inflight, self._recent
        types: set[str] = set()
        for item in items:
            item.done = True
            # Only position and xid stay (in a cursor entry): the payload is let go now.
            item.row = item.event = item.dead_letter = None
            inflight.pop(item.position, None)
            recent[item.position] = None
            types.add(item.event_type)
        while len(recent) > _RECENT_LIMIT:
            recent.popitem(last=False)
        marks = self.marks
        cursors = marks.cursors
        for event_type in types:
            cursor = cursors.get(event_type)
            if cursor is not None:
                marks.advance(cursor)

    def release(self, group: list[Item]) -> None:
        """The group is over: its subjects are free and their next events can run."""
        subjects = self.subjects
        for item in group:
            subject = subjects.get(item.subject)
            if subject is None or not subject.busy:
                continue
            subject.busy = False
            subject.posted = None
            if subject.items:
                self._mark_ready(item.subject, subject)
            elif not subject.parked:
                del subjects[item.subject]

    # -- the retry clock ---------------------------------------------------------------

    def due(self) -> float | None:
        """Unpark subjects whose retry is due; seconds until the next one (None: none)."""
        heap = self._retry_heap
        now = self.clock()
        while heap and heap[0][0] <= now:
            _, _, key = heapq.heappop(heap)
            subject = self.subjects.get(key)
            if subject is not None:
                subject.parked = False
                self._mark_ready(key, subject)
        return heap[0][0] - now if heap else None

    # -- partitions (ADR 0006) ---------------------------------------------------------

    def busy_partitions(self) -> set[int]:
        """Partitions with events read here and not yet given an outcome."""
        return {i.partition for i in self.inflight.values()}

    def backlog_by_partition(self) -> dict[int, int]:
        """Events read here and not yet given an outcome, per partition."""
        counts: dict[int, int] = {}
        for item in self.inflight.values():
            counts[item.partition] = counts.get(item.partition, 0) + 1
        return counts

    def running_partitions(self) -> set[int]:
        """Partitions with events in a running group (read, not queued any more)."""
        queued = {id(i) for s in self.subjects.values() for i in s.items}
        return {i.partition for i in self.inflight.values() if id(i) not in queued}

    def drop(self, partitions: set[int]) -> int:
        """Forget the queued events of partitions this process lost or hands over;
        returns how many.

        Events in a running group stay: a lost partition's are refused by the fence, a
        handed-over one's commit before it is released. Dropped events get no outcome
        here; the new owner reads them from its stored cursor.
        """
        if not partitions:
            return 0
        dropped = 0
        for key, subject in list(self.subjects.items()):
            keep = [i for i in subject.items if i.partition not in partitions]
            if len(keep) == len(subject.items):
                continue
            for item in subject.items:
                if item.partition in partitions:
                    self._forget(item)
                    dropped += 1
            subject.items = keep
            if not keep and not subject.busy:
                del self.subjects[key]
        if dropped:
            # Their entries leave the types' pending events now: left for a later outcome
            # to clear, they could hold the buffer's cap with nothing else in flight, and
            # no read would come again.
            self.marks.advance_all()
        return dropped

    def forget(self, items: Iterable[Item]) -> None:
        """Let events go without an outcome (their lease was lost mid-group)."""
        for item in items:
            self._forget(item)
        self.marks.advance_all()

    def _forget(self, item: Item) -> None:
        self.inflight.pop(item.position, None)
        # Done for the cursor's heap only: this process no longer stores that partition's
        # cursor, and the type's mark must not wait for an event it will never handle.
        item.done = True
        item.row = item.event = item.dead_letter = None

    # -- observation -------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing in flight, waiting for a retry, or being replayed."""
        return not self.inflight and not self._retry_heap and not self.replays

    def buffered(self) -> int:
        """Events held in memory: in flight, plus finished ones held by a cursor entry."""
        return max(len(self.inflight), self.marks.held())

    # -- internals ---------------------------------------------------------------------

    def _choose(self, scan: bool) -> int:
        """Where in the ready queue the subject to run next is; -1 when none is ready.

        The one with the most queued events among the first ``_WINDOW``: the longest
        subjects start first, so a backlog does not end waiting on one that started
        late (each subject's events run one after another). The oldest is passed over
        at most ``_WINDOW`` times in a row, so none waits for long.
        """
        ready = self.ready
        subjects = self.subjects
        while ready:
            subject = subjects.get(ready[0])
            if subject is not None and subject.items and not (subject.busy or subject.parked):
                break
            ready.popleft()
            if subject is not None:
                subject.queued = False
        else:
            return -1
        if not scan or len(ready) == 1 or self._passed >= _WINDOW:
            return 0
        best = 0
        most = len(subjects[ready[0]].items)
        for index in range(1, min(len(ready), _WINDOW)):
            other = subjects.get(ready[index])
            if other is not None and len(other.items) > most and not (other.busy or other.parked):
                best, most = index, len(other.items)
        return best

    def _pop_ready(self, index: int, posted: list[str] | None) -> SubjectQueue:
        """Take the subject at ``index`` of the ready queue (see :meth:`_choose`): busy,
        its later events posted to ``posted``."""
        ready = self.ready
        if index:
            key = ready[index]
            del ready[index]
            self._passed += 1
        else:
            key = ready.popleft()
            self._passed = 0
        subject = self.subjects[key]
        subject.queued = False
        subject.busy = True
        subject.posted = posted
        return subject

    def _mark_ready(self, key: str, subject: SubjectQueue) -> None:
        if subject.items and not (subject.busy or subject.parked or subject.queued):
            subject.queued = True
            self.ready.append(key)
            if self._on_ready is not None:
                self._on_ready()
