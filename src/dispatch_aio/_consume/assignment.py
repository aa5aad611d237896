"""Which member of a consumer should own which partition: fair, sticky, deterministic.

Pure (no I/O, no clock). Every member computes :func:`assign` from the same view
(live members, current owners) and gets the same answer, so no coordinator is needed:
each releases what the target gives to others and acquires what it gives to it.

The target is fair (shares differ by at most one partition) and moves as few
partitions as a fair target can: each member keeps its own partitions up to its share,
the members that already hold the most get the shares with one more, and only the
excess and the partitions of members that are gone (or of nobody) change hands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["PARTITION_COUNT", "Moves", "assign", "movement", "moves_for"]

#: Buckets of the subject hash stored with every event (``dispatcher_partition``).
PARTITION_COUNT = 256


def assign(
    members: Iterable[str],
    owners: Mapping[int, str | None],
    partitions: int = PARTITION_COUNT,
) -> dict[int, str]:
    """The target owner of every partition ``0 .. partitions - 1``.

    ``owners`` maps partitions to their current live owner (missing or None: free; an
    owner not in ``members`` counts as gone). Empty ``members``: an empty target.
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
        for partition in held[member][: share[member]]:
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
