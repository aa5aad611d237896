"""What one member of a consumer group does next: pure planning over a group view.

The group runner (I/O) heartbeats, reads the view (``LeaseStore.view``), asks
:func:`plan` and carries it out: drops what it lost, stops reading what it must hand
over, releases those once their in-flight events have outcomes, acquires what is free
and targeted at it, and looks again at ``next_check``. ADR 0006, part B.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import datetime

from .assignment import PARTITION_COUNT, assign, balance, moves_for

__all__ = ["SETTLE", "Plan", "plan"]

#: Seconds after the latest backlog report before a plan acts on the backlogs.
SETTLE = 0.1


@dataclass(frozen=True, slots=True)
class Plan:
    """One member's next steps; partitions sorted."""

    #: Held here before, but the view gives them (or a newer epoch) to someone else:
    #: drop their queued events and their stream now. Their outcomes would be fenced.
    lost: tuple[int, ...]
    #: The view says this member holds them but it did not know (its row expired and was
    #: revived by a heartbeat, or a restart under the same id): start them from their
    #: stored cursors at the view's epoch, or hand them over like any other.
    adopt: tuple[int, ...]
    #: Targeted at another member: stop reading them and let in-flight events finish.
    hand_over: tuple[int, ...]
    #: Of those, the ones with nothing in flight: release them now.
    release: tuple[int, ...]
    #: Targeted here and free (or held by an expired member): acquire them.
    acquire: tuple[int, ...]
    #: Seconds until the next look at the group.
    next_check: float
    #: Held here with nothing in flight, given to the member with the smaller backlog
    #: (partition, member): stop reading them and release them as offered to it.
    offer: tuple[tuple[int, str], ...] = ()


def plan(
    member: str,
    live_members: Set[str],
    owners: Mapping[int, str | None],
    epochs: Mapping[int, int],
    held: Mapping[int, int],
    busy: Set[int],
    *,
    now: datetime | None,
    next_expiry: datetime | None,
    heartbeat: float,
    partitions: int = PARTITION_COUNT,
    backlog: Mapping[int, int] | None = None,
    offers: Mapping[int, str] | None = None,
    last_report: datetime | None = None,
    running: Set[int] = frozenset(),
) -> Plan:
    """Plan from a view.

    ``owners``: partition -> live owner (None: free or its owner expired); ``epochs``:
    partition -> epoch in the view; ``held``: partition -> epoch this member believes
    it holds; ``busy``: partitions with events in flight here. ``now`` and
    ``next_expiry`` come from the server's clock (the view): another member's expiry is
    when its partitions become free, so the next look is no later than that.

    ``backlog``: partition -> events queued there, as its owner last reported; with it,
    this member gives partitions with a backlog to members with less
    (:func:`.assignment.balance`), once no report is younger than ``SETTLE`` seconds
    (``last_report``: the latest): the members of a group read a new backlog at about
    the same time, and each plan should see all of their reports. ``offers``: free
    partition -> the live member it is offered to (it counts as that member's).
    ``running``: partitions with events in a running group here (never given: they
    could not be released at once).
    """
    members = set(live_members) | {member}
    lost = tuple(
        sorted(p for p, e in held.items() if owners.get(p) != member or epochs.get(p) != e)
    )
    current = {p: o for p, o in owners.items() if o is not None}
    # An offered partition counts as its receiver's for the target (so it is kept for
    # it), but it is free: the receiver acquires it, nobody adopts it.
    promised = dict(current)
    for p, receiver in (offers or {}).items():
        if p not in current and receiver in members:
            promised[p] = receiver
    target = assign(members, promised, partitions, backlog)
    moves = moves_for(member, current, target)
    offer: tuple[tuple[int, str], ...] = ()
    settle = 0.0
    if backlog and now is not None and last_report is not None:
        settle = SETTLE - (now - last_report).total_seconds()
    if backlog and settle <= 0:
        # Only what this member holds, keeps and can let go of now may be given.
        givable = {p for p in moves.keep if p in held and p not in running and p not in lost}
        fixed = {p for p, m in target.items() if m == member} - givable
        gifts = balance(target, backlog, fixed=fixed)
        offer = tuple((p, gifts[p]) for p in sorted(givable) if p in gifts)
    adopt = tuple(p for p in moves.keep + moves.release if p not in held)
    hand_over = tuple(p for p in moves.release if p not in lost)
    release = tuple(p for p in hand_over if p not in busy)
    acquire = tuple(p for p in moves.acquire if owners.get(p) is None)
    wait = heartbeat if settle <= 0 else min(heartbeat, settle + 0.01)
    if now is not None and next_expiry is not None:
        # Just after the earliest expiry of another member: then its leases can be taken.
        wait = min(wait, max(0.0, (next_expiry - now).total_seconds()) + 0.05)
    if (hand_over and not release) or (moves.acquire and not acquire):
        # Waiting on our own drain, or on another member's hand-over (it notifies, but a
        # notification can be lost): look again soon.
        wait = min(wait, 0.5)
    return Plan(lost, adopt, hand_over, release, acquire, wait, offer)
