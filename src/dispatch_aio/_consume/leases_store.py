"""Storage of consumer groups: members, partition leases, the fence, partition cursors.

The SQL lives in ``sql/queries.sql`` (``lease_*``, ``partition_cursors_*``,
``consumer_record_handled_fenced``); the design is ADR 0006. Every method runs on the
caller's connection. Only :meth:`LeaseStore.acquire` opens a transaction of its own;
the fence and the fenced outcome insert must run inside the caller's outcome
transaction, which they never commit.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .._errors import LeaseLostError
from .._sql import queries
from .assignment import PARTITION_COUNT

__all__ = [
    "FENCE_SQLSTATE",
    "GroupView",
    "Lease",
    "LeaseStore",
    "Member",
    "PartitionStatus",
    "is_lease_lost",
]

#: The SQLSTATE ``dispatcher_lease_fence`` raises when a lease was taken over.
FENCE_SQLSTATE = "DA001"


def is_lease_lost(exc: BaseException) -> bool:
    """True when a driver error is the fence refusing an outcome (the group must roll back)."""
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == FENCE_SQLSTATE


@dataclass(frozen=True, slots=True)
class Member:
    """One process of a consumer, as the database sees it."""

    member_id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    alive: bool
    #: When it last reported a change of backlog (None: never).
    backlog_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """One partition's lease: ``owner`` None when free; epoch is the fencing token."""

    partition: int
    owner: str | None
    epoch: int
    owner_alive: bool
    #: Events queued in the partition, as its owner last reported (a hint for balance).
    backlog: int = 0
    #: Free, and offered to this live member for a second (ADR 0006, part E).
    offered_to: str | None = None

    @property
    def held(self) -> bool:
        """Owned by a live member (otherwise anyone alive may take it)."""
        return self.owner is not None and self.owner_alive


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One partition as an operator sees it: live owner (None: unowned), epoch, lag."""

    partition: int
    owner: str | None
    epoch: int
    lag: int


@dataclass(frozen=True, slots=True)
class GroupView:
    """Members and leases of one consumer, read at ``now`` (the server's clock)."""

    members: tuple[Member, ...]
    leases: tuple[Lease, ...]
    now: datetime | None

    def live_members(self) -> list[str]:
        """Ids of the unexpired members, sorted."""
        return sorted(m.member_id for m in self.members if m.alive)

    def owners(self) -> dict[int, str | None]:
        """Partition -> live owner (None when free or held by an expired member)."""
        return {lease.partition: lease.owner if lease.held else None for lease in self.leases}

    def backlog(self) -> dict[int, int]:
        """Partition -> reported backlog, for the partitions with one."""
        return {lease.partition: lease.backlog for lease in self.leases if lease.backlog}

    def offers(self) -> dict[int, str]:
        """Free partition -> the live member it stands offered to."""
        return {
            lease.partition: lease.offered_to
            for lease in self.leases
            if lease.offered_to is not None
        }

    def last_report(self) -> datetime | None:
        """The latest change of backlog any live member reported."""
        stamps = [m.backlog_at for m in self.members if m.alive and m.backlog_at is not None]
        return max(stamps) if stamps else None

    def held_by(self, member_id: str) -> dict[int, int]:
        """Partition -> epoch of the leases ``member_id`` holds."""
        return {lease.partition: lease.epoch for lease in self.leases if lease.owner == member_id}

    def next_expiry(self, member_id: str) -> datetime | None:
        """The earliest expiry among the other live members: when to look again."""
        others = [m.expires_at for m in self.members if m.alive and m.member_id != member_id]
        return min(others) if others else None


def default_member_id() -> str:
    """``host:pid:random``: readable in ``status``, and unique even where hosts share a
    name and pids repeat (containers: every one may be pid 1 on the same hostname)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseStore:
    """The group queries of one member of one consumer."""

    def __init__(
        self,
        schema: str,
        consumer: str,
        member_id: str | None = None,
        *,
        lease_timeout: float = 10.0,
        partitions: int = PARTITION_COUNT,
    ) -> None:
        self.q = queries(schema)
        self.consumer = consumer
        self.member_id = member_id if member_id is not None else default_member_id()
        self.lease_timeout = lease_timeout
        self.partitions = partitions
        #: What ``status`` shows of this process; liveness is the heartbeat, never these.
        self.host = socket.gethostname()
        self.pid = os.getpid()
        # After its fence, an outcome transaction may idle this long before COMMIT: a
        # paused owner is cut off by the server instead of holding a takeover back.
        self.fence_idle_ms = max(1000, int(lease_timeout * 500))

    # -- membership ----------------------------------------------------------------

    async def join(self, conn: asyncpg.Connection) -> datetime:
        """Register this member (or revive it) and create missing lease rows; notifies."""
        row = await conn.fetchrow(
            self.q.lease_join,
            self.consumer,
            self.member_id,
            self.host,
            self.pid,
            self.lease_timeout,
            self.partitions,
        )
        expires_at: datetime = row["expires_at"]
        return expires_at

    async def heartbeat(self, conn: asyncpg.Connection) -> datetime | None:
        """Move this member's expiry forward; None when it was removed (rejoin, all lost)."""
        expires_at: datetime | None = await conn.fetchval(
            self.q.lease_heartbeat, self.consumer, self.member_id, self.lease_timeout
        )
        return expires_at

    async def view(self, conn: asyncpg.Connection) -> GroupView:
        """Members and leases as they are now (two reads; good enough for planning)."""
        members = await conn.fetch(self.q.lease_members, self.consumer)
        leases = await conn.fetch(self.q.lease_owners, self.consumer)
        return GroupView(
            members=tuple(
                Member(
                    member_id=r["member_id"],
                    host=r["host"],
                    pid=r["pid"],
                    started_at=r["started_at"],
                    heartbeat_at=r["heartbeat_at"],
                    expires_at=r["expires_at"],
                    alive=r["alive"],
                    backlog_at=r["backlog_at"],
                )
                for r in members
            ),
            leases=tuple(
                Lease(
                    partition=r["partition"],
                    owner=r["owner"],
                    epoch=r["epoch"],
                    owner_alive=r["owner_alive"],
                    backlog=r["backlog"],
                    offered_to=r["offered_to"],
                )
                for r in leases
            ),
            now=members[0]["now"] if members else None,
        )

    async def leave(self, conn: asyncpg.Connection) -> int:
        """Release every lease and remove this member (after draining); notifies."""
        row = await conn.fetchrow(self.q.lease_leave, self.consumer, self.member_id)
        released: int = row["released"]
        return released

    async def expire(self, conn: asyncpg.Connection, grace: float = 0.0) -> list[int]:
        """Remove members expired for more than ``grace`` seconds; returns the freed partitions."""
        row = await conn.fetchrow(self.q.lease_expire, self.consumer, grace)
        return list(row["partitions"] or ())

    # -- leases --------------------------------------------------------------------

    async def acquire(
        self, conn: asyncpg.Connection, partitions: Iterable[int], *, lock_timeout: float = 5.0
    ) -> dict[int, int]:
        """Take those of ``partitions`` that are free or held by an expired member.

        Runs in a transaction of its own (the connection must not be in one). Waits, up to
        ``lock_timeout``, for outcome transactions of the previous owner that passed their
        fence. Returns partition -> new epoch for what was taken.
        """
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('lock_timeout', $1, true)", f"{int(lock_timeout * 1000)}ms"
            )
            rows = await conn.fetch(self.q.lease_acquire, self.consumer, self.member_id, wanted)
        return {r["partition"]: r["epoch"] for r in rows}

    async def report_backlog(
        self, conn: asyncpg.Connection, backlog: Mapping[int, int], *, notify: bool
    ) -> int:
        """Store how many events are queued in each partition held here (others untouched);
        with ``notify``, the other members look at the group again. Returns the rows changed."""
        parts = sorted(backlog)
        reported: int = await conn.fetchval(  # the changed rows' count
            self.q.lease_report_backlog,
            self.consumer,
            self.member_id,
            parts,
            [backlog[p] for p in parts],
            notify,
        )
        return reported

    async def offer(
        self, conn: asyncpg.Connection, partitions: Iterable[int], member_id: str
    ) -> list[int]:
        """Release partitions (nothing in flight) for ``member_id`` to take; notifies."""
        rows = await conn.fetch(
            self.q.lease_offer, self.consumer, self.member_id, sorted(set(partitions)), member_id
        )
        return sorted(r["partition"] for r in rows)

    async def release(self, conn: asyncpg.Connection, partitions: Iterable[int]) -> list[int]:
        """Hand partitions back (their in-flight events drained first); notifies."""
        rows = await conn.fetch(
            self.q.lease_release, self.consumer, self.member_id, sorted(set(partitions))
        )
        return sorted(r["partition"] for r in rows)

    async def fence(self, conn: asyncpg.Connection, epochs: Mapping[int, int]) -> None:
        """Inside an outcome transaction: LeaseLostError unless every lease is still ours.

        The caller's transaction must then roll back.
        """
        parts = sorted(epochs)
        try:
            await conn.execute(
                self.q.lease_fence,
                self.consumer,
                self.member_id,
                parts,
                [epochs[p] for p in parts],
                self.fence_idle_ms,
            )
        except asyncpg.PostgresError as exc:
            if is_lease_lost(exc):
                raise LeaseLostError(str(exc), tuple(parts)) from exc
            raise

    async def record_outcomes_fenced(
        self,
        conn: asyncpg.Connection,
        event_ids: Sequence[str],
        dead_lettered: Sequence[str],
        epochs: Mapping[int, int],
    ) -> set[str]:
        """Insert dedup markers behind the fence; returns the ids NOT inserted.

        ``dead_lettered`` names those of ``event_ids`` whose outcome is a dead letter;
        the others were handled. An id comes back when its marker was already there:
        another process of this consumer finished it first (almost never, so a group
        normally gets no row back). Raises LeaseLostError (and writes nothing) when a
        lease was taken over.
        """
        parts = sorted(epochs)
        try:
            rows = await conn.fetch(
                self.q.consumer_record_handled_fenced,
                self.consumer,
                list(event_ids),
                list(dead_lettered),
                self.member_id,
                parts,
                [epochs[p] for p in parts],
                self.fence_idle_ms,
            )
        except asyncpg.PostgresError as exc:
            if is_lease_lost(exc):
                raise LeaseLostError(str(exc), tuple(parts)) from exc
            raise
        return {r[0] for r in rows}

    async def prepare(self, conn: asyncpg.Connection) -> None:
        """Ready ``conn`` for :meth:`record_outcomes_fenced`: run it once with nothing to
        record (no partitions fenced, no row written, no lock taken).

        A connection's first run of it costs more than the statement itself: the
        driver's catalogue look-up of its array types, the statement's preparation, the
        fence function's compilation and the plans of its statements, once per server
        process. Done here, a group does not wait for them. Its own transaction (the
        connection must not be in one); cancellation leaves nothing behind.
        """
        await self.record_outcomes_fenced(conn, [], [], {})

    async def record_attempt_fenced(
        self,
        conn: asyncpg.Connection,
        event_id: str,
        attempts: int,
        error: str,
        partition: int,
        epoch: int,
    ) -> None:
        """Store a failed attempt behind the fence (one statement: its own transaction).

        Raises LeaseLostError (and writes nothing) when the partition was taken over.
        """
        try:
            await conn.execute(
                self.q.consumer_record_attempt_fenced,
                self.consumer,
                event_id,
                attempts,
                error,
                self.member_id,
                partition,
                epoch,
                self.fence_idle_ms,
            )
        except asyncpg.PostgresError as exc:
            if is_lease_lost(exc):
                raise LeaseLostError(str(exc), (partition,)) from exc
            raise

    async def partition_status(
        self, conn: asyncpg.Connection, event_types: Sequence[str]
    ) -> list[PartitionStatus]:
        """Every partition's live owner, epoch and lag (events past its cursors)."""
        rows = await conn.fetch(self.q.status_partitions, self.consumer, list(event_types))
        return [PartitionStatus(r["partition"], r["owner"], r["epoch"], r["lag"]) for r in rows]

    # -- cursors -------------------------------------------------------------------

    async def read_cursors(
        self, conn: asyncpg.Connection, event_types: Sequence[str], partitions: Iterable[int]
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """Stored cursors per (event type, partition) as (xid, position)."""
        rows = await conn.fetch(
            self.q.partition_cursors_read, self.consumer, list(event_types), sorted(partitions)
        )
        return {
            (r["event_type"], r["partition"]): (r["last_xid"], r["last_position"]) for r in rows
        }

    async def advance_cursors(
        self, conn: asyncpg.Connection, cursors: Mapping[tuple[str, int], tuple[int, int]]
    ) -> None:
        """Move stored cursors forward (never backwards)."""
        if not cursors:
            return
        keys = sorted(cursors)
        await conn.execute(
            self.q.partition_cursors_advance,
            self.consumer,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [cursors[k][0] for k in keys],
            [cursors[k][1] for k in keys],
        )

    async def advance_floor(self, conn: asyncpg.Connection, event_types: Sequence[str]) -> None:
        """Move the per-type cursor up to the lowest partition cursor (never backwards)."""
        await conn.execute(self.q.partition_cursors_floor, self.consumer, list(event_types))
