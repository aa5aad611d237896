"""An event on its way to an outcome, and what the scheduler keeps it in: the state, not
the logic (:mod:`._scheduler` owns that). Pure: no I/O, no asyncio.

:class:`Item` is one event read; :class:`SubjectQueue`, one subject's queued events;
:class:`TypeCursor`, one event type's low-water mark and the events it waits for. The
functions keep their invariants: a subject's events leave from its head, in position
order, and a type's pending events stay in (xid, position) order.
"""

from __future__ import annotations

import bisect
import collections
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Item",
    "Outcome",
    "SubjectQueue",
    "TypeCursor",
    "by_key",
    "by_position",
    "hold",
    "joins",
    "take_head",
]


class Outcome(enum.Enum):
    """How an event left the scheduler."""

    HANDLED = "handled"  # its handler succeeded; the marker committed with its writes
    DEAD_LETTERED = "dead_lettered"  # failed for good (or undecodable); a row says why
    DONE_ELSEWHERE = "done_elsewhere"  # another process of this consumer finished it
    REPLAYED = "replayed"  # a replayed dead letter succeeded
    REPLAY_FAILED = "replay_failed"  # a replayed dead letter failed again


@dataclass(slots=True, eq=False)
class Item:
    """One event on its way to an outcome."""

    position: int
    xid: int
    event_id: str
    event_type: str
    subject: str
    #: The row as read (released once the event is done: memory stays bounded).
    row: Any
    # The fields the fetcher fills come first: it builds one item per row read, and a
    # call with positional arguments only costs half one with keywords.
    #: Attempts so far (failures recorded earlier included).
    attempts: int = 0
    #: Its subject's partition (ADR 0006); -1 for a replay (not fenced).
    partition: int = -1
    #: The decoded event handed to the handler; None when the row could not be decoded.
    event: Any = None
    #: Set when the next group must dead-letter the event instead of handling it.
    dead_letter: Any = None
    #: A handler without a connection succeeded; only its marker is left to commit.
    succeeded: bool = False
    #: The dead letter this run replays, if it is a replay.
    replay_of: str | None = None
    #: Run alone in its group (a replay, or a suspect after a group failed to commit).
    isolate: bool = False
    #: Its group's commit was under way when the connection failed: it may have committed.
    in_doubt: bool = False
    done: bool = False


@dataclass(slots=True, eq=False)
class SubjectQueue:
    items: list[Item] = field(default_factory=list)
    busy: bool = False
    parked: bool = False
    queued: bool = False
    #: The mailbox of the running group that holds it (take_subject, take_more).
    posted: list[str] | None = None


@dataclass(slots=True)
class TypeCursor:
    #: The largest key read (the bound when the reader sets none).
    read: tuple[int, int]
    committed: tuple[int, int]
    flushed: tuple[int, int]
    #: Stored when the consumer started: rows at or below it had their outcome then.
    start: tuple[int, int]
    #: Events read here, in (xid, position) order; finished ones leave it from the front
    #: (lazily), so a stuck head keeps those behind it: that is what the cap bounds.
    pending: collections.deque[Item] = field(default_factory=collections.deque)


def by_position(item: Item) -> int:
    return item.position


def by_key(item: Item) -> tuple[int, int]:
    return (item.xid, item.position)


def joins(item: Item) -> bool:
    """Whether an event may join a running group (not one that must run alone or first
    settle a commit in doubt; a group of its own does those)."""
    return not (item.isolate or item.in_doubt or item.replay_of is not None)


def take_head(items: list[Item], room: int) -> list[Item]:
    """Pop up to ``room`` events from the head of a subject's queue that may join."""
    taken: list[Item] = []
    while items and len(taken) < room and joins(items[0]):
        taken.append(items.pop(0))
    return taken


def hold(pending: collections.deque[Item], item: Item) -> None:
    """Add ``item`` to a type's pending events, keeping them in (xid, position) order.

    Reads mostly come in that order: the event goes last, with no entry of its own (a
    heap needs a key tuple per event, and a search at every pop). An ended transaction's
    rows or a pulled row may go earlier; an event read again after its partition came
    back goes after its finished entry, which leaves first.
    """
    if pending:
        last = pending[-1]
        xid = item.xid
        if last.xid > xid or (last.xid == xid and last.position > item.position):
            at = bisect.bisect_right(pending, (xid, item.position), key=by_key)
            pending.insert(at, item)
            return
    pending.append(item)
