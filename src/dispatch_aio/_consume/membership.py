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

from .assignment import PARTITION_COUNT, assign, moves_for

__all__ = ["Plan", "plan"]


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
) -> Plan:
    """Plan from a view.

    ``owners``: partition -> live owner (None: free or its owner expired); ``epochs``:
    partition -> epoch in the view; ``held``: partition -> epoch this member believes
    it holds; ``busy``: partitions with events in flight here. ``now`` and
    ``next_expiry`` come from the server's clock (the view): another member's expiry is
    when its partitions become free, so the next look is no later than that.
    """
    members = set(live_members) | {member}
    lost = tuple(
        sorted(p for p, e in held.items() if owners.get(p) != member or epochs.get(p) != e)
    )
    current = {p: o for p, o in owners.items() if o is not None}
    target = assign(members, current, partitions)
    moves = moves_for(member, current, target)
    adopt = tuple(p for p in moves.keep + moves.release if p not in held)
    hand_over = tuple(p for p in moves.release if p not in lost)
    release = tuple(p for p in hand_over if p not in busy)
    acquire = tuple(p for p in moves.acquire if owners.get(p) is None)
    wait = heartbeat
    if now is not None and next_expiry is not None:
        # Just after the earliest expiry of another member: then its leases can be taken.
        wait = min(wait, max(0.0, (next_expiry - now).total_seconds()) + 0.05)
    if (hand_over and not release) or (moves.acquire and not acquire):
        # Waiting on our own drain, or on another member's hand-over (it notifies, but a
        # notification can be lost): look again soon.
        wait = min(wait, 0.5)
    return Plan(lost, adopt, hand_over, release, acquire, wait)
