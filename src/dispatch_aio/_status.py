"""Consumer health: cursors, lag, dead letters, and what holds the read horizon back."""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg
from pydantic import BaseModel, ConfigDict

from ._db import translate_errors
from ._identifiers import validate_schema_name
from ._sql import queries

__all__ = [
    "DEFAULT_IDLE_AFTER",
    "ConsumerActivity",
    "ConsumerGroup",
    "ConsumerHealth",
    "GroupMember",
    "HorizonHolder",
    "StatusReport",
    "age",
    "consumer_status",
    "horizon_holders",
]

#: Seconds without a cursor move after which ``status`` calls a consumer idle.
DEFAULT_IDLE_AFTER = 24 * 3600.0

logger = logging.getLogger("dispatch_aio.status")


class ConsumerHealth(BaseModel):
    """One consumer's position on one event type."""

    model_config = ConfigDict(frozen=True)

    consumer: str
    event_type: str
    cursor_xid: int
    cursor_position: int
    cursor_updated_at: datetime
    lag: int
    oldest_pending_age_seconds: float | None
    dead_letters: int
    #: The event the cursor waits for while later events already have outcomes (a hung
    #: or slow handler holds this consumer on this type), and how old that event is.
    held_by_event_id: str | None = None
    held_for_seconds: float | None = None


class HorizonHolder(BaseModel):
    """An open transaction with an id: consumers cannot read past it until it ends."""

    model_config = ConfigDict(frozen=True)

    kind: str
    pid: int | None
    gid: str | None
    database: str | None
    user_name: str | None
    application_name: str | None
    state: str | None
    xid: str
    age_seconds: float
    query: str | None


class ConsumerActivity(BaseModel):
    """When a consumer last showed work: its cursors' latest move (or its first start).

    ``idle`` when that is longer ago than the report's ``idle_after``: a consumer that
    was retired, or whose workers are all down (its lag then tells which matters).
    """

    model_config = ConfigDict(frozen=True)

    consumer: str
    last_activity_at: datetime
    idle_seconds: float
    idle: bool


class GroupMember(BaseModel):
    """One live process of a consumer (ADR 0006) and the partitions it holds."""

    model_config = ConfigDict(frozen=True)

    member_id: str
    host: str
    pid: int
    since: datetime
    partitions: list[int]
    #: Events past the cursors of its partitions (an upper bound, as ``lag``).
    lag: int
    #: Events it last reported, over its partitions, as read without an outcome or left
    #: to read (ADR 0006, part E: what gifts even out). 0 for a process alone: it
    #: reports nothing.
    backlog: int = 0


class ConsumerGroup(BaseModel):
    """The processes of one consumer and the partitions nobody live holds."""

    model_config = ConfigDict(frozen=True)

    consumer: str
    members: list[GroupMember]
    unowned: list[int]
    #: Lag of the partitions nobody holds.
    unowned_lag: int


class StatusReport(BaseModel):
    """Everything ``dispatch-aio status`` shows."""

    model_config = ConfigDict(frozen=True)

    schema_name: str
    consumers: list[ConsumerHealth]
    horizon_holders: list[HorizonHolder]
    warnings: list[str]
    activity: list[ConsumerActivity] = []
    groups: list[ConsumerGroup] = []


async def horizon_holders(
    conn: asyncpg.Connection, *, schema: str = "public"
) -> list[HorizonHolder]:
    """Transactions holding consumers back, oldest first (all databases of the cluster)."""
    rows = await conn.fetch(queries(schema).status_horizon_holders)
    return [HorizonHolder(**dict(r)) for r in rows]


async def consumer_status(
    pool: asyncpg.Pool | asyncpg.Connection,
    *,
    schema: str = "public",
    consumer: str | None = None,
    horizon_warning_after: float = 60.0,
    idle_after: float = DEFAULT_IDLE_AFTER,
) -> StatusReport:
    """Per consumer and event type: cursor, lag, oldest pending age, dead letters.

    Also lists transactions holding the read horizon back; one open longer than
    ``horizon_warning_after`` seconds is logged as a warning and reported in ``warnings``.
    Per consumer, ``activity`` says when its cursors last moved; a consumer idle longer
    than ``idle_after`` seconds is marked and warned about. Read-only; runs outside any
    transaction.
    """
    validate_schema_name(schema)
    with translate_errors(schema):
        if isinstance(pool, asyncpg.Pool):
            async with pool.acquire() as conn:
                return await _status(conn, schema, consumer, horizon_warning_after, idle_after)
        return await _status(pool, schema, consumer, horizon_warning_after, idle_after)


async def _activity(
    conn: asyncpg.Connection, schema: str, consumer: str | None, idle_after: float
) -> list[ConsumerActivity]:
    rows = await conn.fetch(queries(schema).status_last_activity, consumer)
    activity = []
    for r in rows:
        idle_seconds = max(0.0, (r["now"] - r["last_activity_at"]).total_seconds())
        activity.append(
            ConsumerActivity(
                consumer=r["consumer"],
                last_activity_at=r["last_activity_at"],
                idle_seconds=idle_seconds,
                idle=idle_seconds >= idle_after,
            )
        )
    return activity


async def _status(
    conn: asyncpg.Connection,
    schema: str,
    consumer: str | None,
    warn_after: float,
    idle_after: float,
) -> StatusReport:
    rows = await conn.fetch(queries(schema).status_consumers, consumer)
    health = [
        ConsumerHealth(
            consumer=r["consumer"],
            event_type=r["event_type"],
            cursor_xid=r["last_xid"],
            cursor_position=r["last_position"],
            cursor_updated_at=r["updated_at"],
            lag=r["lag"],
            oldest_pending_age_seconds=None
            if r["oldest_pending_at"] is None
            else max(0.0, (r["now"] - r["oldest_pending_at"]).total_seconds()),
            dead_letters=r["dead_letters"],
            held_by_event_id=r["held_by_event_id"],
            held_for_seconds=None
            if r["held_by_event_id"] is None
            else max(0.0, (r["now"] - r["head_created_at"]).total_seconds()),
        )
        for r in rows
    ]
    holders = await horizon_holders(conn, schema=schema)
    groups = await _groups(conn, schema, health)
    warnings = [
        f"consumer {h.consumer} is held on {h.event_type} by event {h.held_by_event_id} "
        f"(published {h.held_for_seconds:.0f}s ago): later events are handled, but its "
        "cursor waits for that one; look for a hung or slow handler"
        for h in health
        if h.held_by_event_id is not None and (h.held_for_seconds or 0) >= warn_after
    ]
    for holder in holders:
        if holder.age_seconds >= warn_after:
            who = f"pid {holder.pid}" if holder.pid is not None else f"prepared {holder.gid!r}"
            message = (
                f"transaction {holder.xid} ({who}, database {holder.database}) has been open "
                f"{holder.age_seconds:.0f}s: consumers cannot read events committed after it "
                "began until it ends"
            )
            warnings.append(message)
            logger.warning(message, extra={"pid": holder.pid, "age_seconds": holder.age_seconds})
    activity = await _activity(conn, schema, consumer, idle_after)
    lag = {c: 0 for c in (a.consumer for a in activity)}
    for h in health:
        lag[h.consumer] = lag.get(h.consumer, 0) + h.lag
    warnings.extend(
        f"consumer {a.consumer} has not moved for {age(a.idle_seconds)} "
        f"({lag.get(a.consumer, 0)} events waiting): retired, or are its workers down?"
        for a in activity
        if a.idle
    )
    return StatusReport(
        schema_name=schema,
        consumers=health,
        horizon_holders=holders,
        warnings=warnings,
        activity=activity,
        groups=groups,
    )


def age(seconds: float) -> str:
    """``3d 4h``, ``5h 12m``, ``7m``: an age to read at a glance."""
    minutes = int(seconds // 60)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m" if minutes else f"{int(seconds)}s"


async def _groups(
    conn: asyncpg.Connection, schema: str, health: list[ConsumerHealth]
) -> list[ConsumerGroup]:
    """Members, their partitions, lag and reported backlog, and unowned partitions, per
    consumer that has ever run as a group member (one with lease rows)."""
    from ._consume.leases_store import LeaseStore

    types: dict[str, list[str]] = {}
    for h in health:
        types.setdefault(h.consumer, []).append(h.event_type)
    groups = []
    for name, event_types in types.items():
        store = LeaseStore(schema, name, member_id="status:0")
        view = await store.view(conn)
        if not view.leases:
            continue
        parts = await store.partition_status(conn, event_types)
        backlog = view.backlog()
        held: dict[str, list[int]] = {}
        lag: dict[str | None, int] = {}
        reported: dict[str | None, int] = {}
        for p in parts:
            if p.owner is not None:
                held.setdefault(p.owner, []).append(p.partition)
            lag[p.owner] = lag.get(p.owner, 0) + p.lag
            reported[p.owner] = reported.get(p.owner, 0) + backlog.get(p.partition, 0)
        groups.append(
            ConsumerGroup(
                consumer=name,
                members=[
                    GroupMember(
                        member_id=m.member_id,
                        host=m.host,
                        pid=m.pid,
                        since=m.started_at,
                        partitions=held.get(m.member_id, []),
                        lag=lag.get(m.member_id, 0),
                        backlog=reported.get(m.member_id, 0),
                    )
                    for m in view.members
                    if m.alive
                ],
                unowned=[p.partition for p in parts if p.owner is None],
                unowned_lag=lag.get(None, 0),
            )
        )
    return groups
