"""Which member of a consumer should own which partition: fair, sticky, deterministic.

Pure (no I/O, no clock). Every member computes :func:`assign` from the same view
(live members, current owners) and gets the same answer, so no coordinator is needed:
each releases what the target gives to others and acquires what it gives to it.

The target is fair (shares differ by at most one partition) and moves as few
partitions as a fair target can: each member keeps its own partitions up to its share,
the members that already hold the most get the shares with one more, and only the
excess and the partitions of members that are gone (or of nobody) change hands.

:func:`balance` evens out the work itself: partitions carry the backlog their owner last
reported, and a member with much more queued than another gives it a partition with a
backlog; the other then holds one too many, and gives back (by the count-fair rule) the
one with the least backlog. Counts stay fair, and a group whose backlog is gone keeps
what it has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

__all__ = [
    "MIN_GAP",
    "PARTITION_COUNT",
    "Moves",
    "assign",
    "balance",
    "keep_order",
    "movement",
    "moves_for",
]

#: Buckets of the subject hash stored with every event (``dispatcher_partition``).
PARTITION_COUNT = 256

#: Backlogs of two members closer than this (in events) are left as they are: moving a
#: partition costs a hand-over, worth it only for a real difference.
MIN_GAP = 32


def assign(
    members: Iterable[str],
    owners: Mapping[int, str | None],
    partitions: int = PARTITION_COUNT,
    backlog: Mapping[int, int] | None = None,
) -> dict[int, str]:
    """The target owner of every partition ``0 .. partitions - 1``.

    ``owners`` maps partitions to their current live owner (missing or None: free; an
    owner not in ``members`` counts as gone). Empty ``members``: an empty target. With
    ``backlog``, a member holding more than its share keeps the partitions with the most
    queued (:func:`keep_order`); without, the lowest numbers.
    """
    live = sorted(set(members))
    if not live:
        return {}
    base, extra = divmod(partitions, len(live))
    held: dict[str, list[int]] = {m: [] for m in live}
    for partition in range(partitions):
        owner = owners.get(partition)
        if owner in held:
            held[owner].append(partition)
    # The shares with one more go to the members holding the most already: each such
    # share then keeps a partition in place instead of moving one.
    by_holding = sorted(live, key=lambda m: (-len(held[m]), m))
    share = {m: base + (1 if rank < extra else 0) for rank, m in enumerate(by_holding)}
    target: dict[int, str] = {}
    for member in live:
        kept = held[member] if backlog is None else keep_order(held[member], backlog)
        for partition in kept[: share[member]]:
            target[partition] = member
    free = [p for p in range(partitions) if p not in target]
    # Fill the shares in member order: deterministic, and each member's new partitions
    # come as one run of the free list.
    index = 0
    for member in live:
        missing = share[member] - min(share[member], len(held[member]))
        for partition in free[index : index + missing]:
            target[partition] = member
        index += missing
    return target


def keep_order(partitions: Iterable[int], backlog: Mapping[int, int]) -> list[int]:
    """The order in which a member keeps partitions: most queued first, then lowest
    number; one over its share gives up the last."""
    return sorted(partitions, key=lambda p: (-backlog.get(p, 0), p))


def balance(
    target: Mapping[int, str],
    backlog: Mapping[int, int],
    *,
    fixed: Set[int] = frozenset(),
    min_gap: int = MIN_GAP,
) -> dict[int, str]:
    """The partitions to give, to even out the members' backlogs: partition -> receiver.

    Only the gifts are returned; what each receiver gives back follows from
    :func:`assign` once it holds one too many.

    ``backlog`` maps partitions to the events queued in them (missing: none); ``fixed``
    partitions never move (their owner cannot let them go now). While the member with
    the most queued has at least ``max(min_gap, mean / 16)`` more than the one with the
    least, it gives that one a partition with a backlog, and gets back the one that
    member would give up (the last in :func:`keep_order`), which must be idle: counts
    stay as they were, and the backlogs move as planned wherever the idle one ends up.
    The partition chosen leaves the two closest. Every move narrows the difference, so this
    ends; the answer depends on the inputs alone (ties go to the lowest partition and
    member id), so every member computes the same one from the same view.
    """
    gifts: dict[int, str] = {}
    held: dict[str, list[int]] = {}
    for partition, member in sorted(target.items()):
        held.setdefault(member, []).append(partition)
    if len(held) < 2:
        return gifts
    load = {m: sum(backlog.get(p, 0) for p in parts) for m, parts in held.items()}
    threshold = max(min_gap, sum(load.values()) // (16 * len(held)))
    for _ in range(len(target)):
        high = min(held, key=lambda m: (-load[m], m))
        low = min(held, key=lambda m: (load[m], m))
        gap = load[high] - load[low]
        if gap < threshold:
            break
        # What the receiver gives back: its partition with the least queued. Only an idle
        # one: then it carries no backlog wherever it goes (the share with one more may
        # follow the gift, and the count-fair rule then fills another member's gap).
        given = keep_order(held[low], backlog)[-1]
        if backlog.get(given, 0):
            break
        best: tuple[int, int] | None = None  # (how close it leaves the two, partition)
        for partition in held[high]:
            moved = backlog.get(partition, 0)
            if partition not in fixed and 0 < moved < gap:
                closeness = abs(gap - 2 * moved)
                if best is None or (closeness, partition) < best:
                    best = (closeness, partition)
        if best is None:
            break
        taken = best[1]
        moved = backlog.get(taken, 0)
        held[high].remove(taken)
        held[low].remove(given)
        held[high].append(given)
        held[low].append(taken)
        gifts[taken] = low
        load[high] -= moved
        load[low] += moved
    # A partition given on twice may have come back to where it was.
    return {p: m for p, m in gifts.items() if m != target[p]}


def movement(owners: Mapping[int, str | None], target: Mapping[int, str]) -> int:
    """How many partitions change owner (a free partition given to someone counts)."""
    return sum(1 for partition, member in target.items() if owners.get(partition) != member)


@dataclass(frozen=True, slots=True)
class Moves:
    """What one member does to reach the target."""

    release: tuple[int, ...]  # held now, targeted at another: drain, then hand back
    acquire: tuple[int, ...]  # targeted at it: take once free (or its owner expired)
    keep: tuple[int, ...]


def moves_for(member: str, owners: Mapping[int, str | None], target: Mapping[int, str]) -> Moves:
    """The partitions ``member`` must release, acquire and keep."""
    mine = {p for p, o in owners.items() if o == member}
    wanted = {p for p, m in target.items() if m == member}
    return Moves(
        release=tuple(sorted(mine - wanted)),
        acquire=tuple(sorted(wanted - mine)),
        keep=tuple(sorted(mine & wanted)),
    )
