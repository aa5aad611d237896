"""The snapshot-aware read of ADR 0006 (``consumer_fetch_streams``): one statement.

Takes the plans of the consumer's streams (:mod:`.horizon`) and returns, per stream,
the rows of watched ids (kind 0) and above the frontier (kind 1), the rows pulled
forward for subject order (kind 2), and the statement's own snapshot. Runs in a
read-only transaction of its own, which never takes a transaction id: the reading
connection holds nobody back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg

from .._sql import queries
from .._storage import rollback
from .assignment import PARTITION_COUNT
from .horizon import Key, ReadPlan, Snapshot

__all__ = ["StreamRead", "StreamsRead", "StreamsStore", "partition_mask"]

#: Seconds a failed read's rollback may take before its connection is terminated.
_ROLLBACK_LIMIT = 5.0


class _ReadTransaction:
    """The read's transaction, begun by ``consumer_fetch_streams_begin`` (one round trip
    with its plan setting, where asyncpg's Transaction would take two)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def commit(self) -> None:
        await self._conn.execute("COMMIT")

    async def rollback(self) -> None:
        if self._conn.is_in_transaction():
            await self._conn.execute("ROLLBACK")


def partition_mask(partitions: Iterable[int] | None) -> bytes | None:
    """The read's partition filter: bit ``p`` of the mask (``get_bit`` order) set for
    each partition; None reads every partition (a member that owns them all)."""
    if partitions is None:
        return None
    mask = bytearray(PARTITION_COUNT // 8)
    for p in partitions:
        if not 0 <= p < PARTITION_COUNT:
            raise ValueError(f"partition {p} is outside 0..{PARTITION_COUNT - 1}")
        mask[p // 8] |= 1 << (p % 8)
    return bytes(mask)


@dataclass(slots=True)
class StreamRead:
    """What one stream got from a read: keys to fold into its :class:`Stream`, and rows."""

    watched_rows: list[asyncpg.Record] = field(default_factory=list)
    range_rows: list[asyncpg.Record] | None = None
    pulled: list[asyncpg.Record] = field(default_factory=list)

    @property
    def watched_keys(self) -> list[Key]:
        """Kind 0 keys, in read order."""
        return [(r["xid"], r["position"]) for r in self.watched_rows]

    @property
    def range_keys(self) -> list[Key] | None:
        """Kind 1 keys, in read order; None when the read skipped the range."""
        if self.range_rows is None:
            return None
        return [(r["xid"], r["position"]) for r in self.range_rows]


@dataclass(slots=True)
class StreamsRead:
    """One read of every stream, and the snapshot it was made under."""

    snapshot: Snapshot
    streams: list[StreamRead]


class StreamsStore:
    """``consumer_fetch_streams`` for one consumer and its subscribed types."""

    def __init__(self, schema: str, consumer: str, event_types: Sequence[str]) -> None:
        self.q = queries(schema)
        self.consumer = consumer
        self.event_types = list(event_types)

    async def fetch(
        self,
        conn: asyncpg.Connection,
        plans: Sequence[tuple[ReadPlan, bytes | None]],
        limit: int,
    ) -> StreamsRead:
        """Read every stream (plan, partition mask) in one statement."""
        watched_stream: list[int] = []
        watched_xid: list[int] = []
        watched_after: list[int] = []
        floor_xid: list[int | None] = []
        floor_position: list[int | None] = []
        for ordinal, (plan, _) in enumerate(plans, start=1):
            for xid, after in plan.watched:
                watched_stream.append(ordinal)
                watched_xid.append(xid)
                watched_after.append(after)
        if any(plan.floors for plan, _ in plans):
            # One slot per (stream, partition); empty arrays when no stream has floors.
            floor_xid = [None] * (PARTITION_COUNT * len(plans))
            floor_position = [None] * (PARTITION_COUNT * len(plans))
            for ordinal, (plan, _) in enumerate(plans):
                for partition, (xid, position) in plan.floors:
                    floor_xid[ordinal * PARTITION_COUNT + partition] = xid
                    floor_position[ordinal * PARTITION_COUNT + partition] = position
        # A read-only transaction of its own (no transaction id, so it holds nobody back)
        # only to scope the plan setting: SET LOCAL, so the pool connection keeps nothing,
        # also behind a transaction-pooling PgBouncer.
        transaction = _ReadTransaction(conn)
        try:
            await conn.execute(self.q.consumer_fetch_streams_begin)
            if len(plans) == 1 and not watched_stream and not floor_xid:
                # One stream, nothing watched, no floors: the read of a backlog, and of
                # a steady trickle whenever no transaction was open below the frontier.
                ((plan, mask),) = plans
                rows = await conn.fetch(
                    self.q.consumer_fetch_range,
                    self.event_types,
                    plan.frontier[0],
                    plan.frontier[1],
                    mask,
                    limit,
                    self.consumer,
                )
            else:
                rows = await conn.fetch(
                    self.q.consumer_fetch_streams,
                    self.event_types,
                    [plan.frontier[0] for plan, _ in plans],
                    [plan.frontier[1] for plan, _ in plans],
                    [mask for _, mask in plans],
                    watched_stream,
                    watched_xid,
                    watched_after,
                    limit,
                    self.consumer,
                    floor_xid,
                    floor_position,
                )
            await transaction.commit()
        except BaseException:
            # Shielded and bounded: under a cancel scope every later await is cancelled
            # too, so an unshielded rollback never runs and the pool gets the connection
            # back inside the transaction. One that cannot roll back is terminated.
            await rollback(transaction, conn, _ROLLBACK_LIMIT)
            raise
        reads = [StreamRead() for _ in plans]
        snapshot: Snapshot | None = None
        for row in rows:
            kind = row["kind"]
            if kind == 3:
                snapshot = Snapshot.of(row["snapshot_xmin"], row["snapshot_xmax"], row["xip"])
                continue
            read = reads[row["stream"] - 1]
            if kind == 0:
                read.watched_rows.append(row)
            elif kind == 1:
                if read.range_rows is None:
                    read.range_rows = []
                read.range_rows.append(row)
            else:
                read.pulled.append(row)
        assert snapshot is not None, "consumer_fetch_streams always returns its snapshot"
        # The outer UNION ALL and joins do not keep the CTEs' order; the streams rely on it.
        for read in reads:
            read.watched_rows.sort(key=lambda r: (r["xid"], r["position"]))
            read.pulled.sort(key=lambda r: r["position"])
            if read.range_rows is not None:
                read.range_rows.sort(key=lambda r: (r["xid"], r["position"]))
            elif len(read.watched_rows) < limit:
                read.range_rows = []  # the range ran and found nothing
        return StreamsRead(snapshot, reads)

    async def unread(
        self, conn: asyncpg.Connection, frontier: Key, mask: bytes | None, limit: int
    ) -> dict[int, int]:
        """Rows above ``frontier`` in the partitions of ``mask``, per partition, counted
        over at most ``limit`` rows per type (``consumer_unread_by_partition``)."""
        rows = await conn.fetch(
            self.q.consumer_unread_by_partition,
            self.event_types,
            frontier[0],
            frontier[1],
            mask,
            limit,
        )
        return {r["partition"]: r["n"] for r in rows}
