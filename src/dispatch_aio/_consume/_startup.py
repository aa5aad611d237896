"""Consumer start-up: check the schema and horizon, size the workers, wire the parts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from .._errors import ConfigurationError, HorizonError
from .._migrate import check_schema
from .._registry import Registry
from .._storage._consumer_store import ConsumerStore
from .._telemetry import Telemetry
from ._config import ConsumerConfig
from ._fetcher import Fetcher
from ._handlers import Subscription
from ._handover import HandOver
from ._members import MemberConnection, Members
from ._outcomes import ConsumerStats
from ._reader import ReadLoop
from ._runner import GroupRunner
from ._scheduler import Scheduler
from ._workers import WorkBell, Workers
from .leases_store import LeaseStore, default_member_id
from .streams_store import StreamsStore

__all__ = ["Parts", "prepare"]

logger = logging.getLogger("dispatch_aio.consumer")


@dataclass(slots=True)
class Parts:
    """A consumer's parts, wired to one another, before any of them runs."""

    leases: LeaseStore
    member_connection: MemberConnection
    members: Members
    workers: int
    scheduler: Scheduler
    fetcher: Fetcher
    reader: ReadLoop
    handover: HandOver
    crew: Workers


async def prepare(
    *,
    name: str,
    config: ConsumerConfig,
    pool: asyncpg.Pool,
    registry: Registry,
    telemetry: Telemetry,
    stats: ConsumerStats,
    subscriptions: dict[str, Subscription],
    dsn: str | None,
    listens_on_pool: bool,
    stop_requested: asyncio.Event,
    listening: Callable[[], bool],
    on_dedup_hit: Callable[[str], None],
    log_extra: dict[str, Any],
) -> Parts:
    """Check the schema, the horizon and the pool, store the first cursors, build the parts.

    Takes one pool connection for the checks. Nothing runs yet; cancelled, it leaves
    nothing behind but the cursors it may have stored.
    """
    store = ConsumerStore(config.db_schema, name, list(subscriptions))
    leases = LeaseStore(
        config.db_schema,
        name,
        default_member_id(),  # one per Consumer: two of one name are two members
        lease_timeout=config.lease_timeout,
    )
    # The lambdas below name parts built further down: they are called once running.
    member_connection = MemberConnection(
        dsn, lambda: reader.borrow(), close_timeout=config.commit_timeout
    )
    members = Members(
        leases,
        heartbeat=config.heartbeat,
        step_limit=min(config.commit_timeout, config.lease_timeout / 2),
        connection=member_connection,
        busy=lambda: scheduler.busy_partitions(),
        backlog=lambda: scheduler.backlog_by_partition(),
        running=lambda: scheduler.running_partitions(),
        on_change=lambda conn, gained: handover.changed(conn, gained),
        on_lost=lambda lost: handover.lost(lost),
        log_extra=log_extra,
        unread=lambda conn: fetcher.unread(conn),
    )
    async with pool.acquire(timeout=config.acquire_timeout) as conn:
        await check_schema(conn, config.db_schema)
        await _check_horizon(store, conn)
        await store.init_cursors(conn, from_now=config.start_from == "now")
        stored = await store.read_cursors(conn)
    # After the schema check, which names the more basic problem first.
    workers = worker_count(name, config, pool, listens_on_pool, log_extra)
    max_buffered = config.max_buffered or max(4 * config.batch_size, workers * config.max_group)
    work = WorkBell(workers)
    retry_wake = asyncio.Event()
    scheduler = Scheduler(
        stored,
        workers=workers,
        max_group=config.max_group,
        max_buffered=max_buffered,
        on_ready=work.ring,
        on_retry=retry_wake.set,
    )
    fetcher = Fetcher(
        store,
        scheduler,
        registry,
        streams=StreamsStore(config.db_schema, name, list(subscriptions)),
        # One stream over every type starts at the lowest stored cursor; rows of a type
        # below its own cursor are skipped by the scheduler.
        start=min(stored.values()),
        batch_size=config.batch_size,
        on_dedup_hit=on_dedup_hit,
        payload_models={
            t: s.payload_model for t, s in subscriptions.items() if s.payload_model is not None
        },
    )
    reader = ReadLoop(
        pool=pool,
        config=config,
        store=store,
        fetcher=fetcher,
        scheduler=scheduler,
        stats=stats,
        stop_requested=stop_requested,
        listening=listening,
        refill_below=max(config.batch_size, max_buffered // 2),
        log_extra=log_extra,
        leases=leases,
        on_reconnect=lambda conn: handover.reread(conn),
        on_read=lambda: members.note_backlog(
            len(scheduler.inflight), unread=not fetcher.stream.caught_up
        ),
    )
    handover = HandOver(
        members=members,
        leases=leases,
        fetcher=fetcher,
        scheduler=scheduler,
        reader=reader,
        event_types=list(subscriptions),
        log_extra=log_extra,
    )
    group_runner = GroupRunner(
        name=name,
        config=config,
        subscriptions=subscriptions,
        scheduler=scheduler,
        store=store,
        stats=stats,
        telemetry=telemetry,
        decode=fetcher.decode,
        leases=leases,
        members=members,
        stopping=stop_requested,
    )
    crew = Workers(
        pool=pool,
        config=config,
        scheduler=scheduler,
        runner=group_runner,
        reader=reader,
        stats=stats,
        stop_requested=stop_requested,
        work=work,
        retry_wake=retry_wake,
        log_extra=log_extra,
        prepare=leases.prepare,
        workers=workers,
    )
    return Parts(
        leases=leases,
        member_connection=member_connection,
        members=members,
        workers=workers,
        scheduler=scheduler,
        fetcher=fetcher,
        reader=reader,
        handover=handover,
        crew=crew,
    )


def worker_count(
    name: str,
    config: ConsumerConfig,
    pool: asyncpg.Pool,
    listens_on_pool: bool,
    log_extra: dict[str, Any],
) -> int:
    """``concurrency``, or fewer when the pool cannot give each worker a connection.

    Each worker holds a connection while it runs a group, the fetch loop holds one
    and, without ``listen_connect`` or ``dsn``, so does the listener: more workers
    than the pool can serve would only wait on the pool.
    """
    wanted = config.concurrency
    get_max_size = getattr(pool, "get_max_size", None)
    if get_max_size is None:
        return wanted
    size = int(get_max_size())
    listens = listens_on_pool
    reserved = 2 if listens else 1
    held = "the fetch loop and the LISTEN connection" if listens else "the fetch loop"
    available = size - reserved
    if available < 1:
        # Below this nothing is ever handled: the fetch loop would read events that
        # no worker can get a connection for. Refuse rather than hang.
        raise ConfigurationError(
            f"consumer {name!r} cannot run on a pool of {_connections(size)}: "
            f"{held} hold {_connections(reserved)}, and each worker needs one more; "
            f"give the pool at least {reserved + 1} (concurrency + {reserved} = "
            f"{wanted + reserved} for full speed; dispatch-aio worker --pool-size)"
        )
    if available < wanted:
        logger.warning(
            "consumer %s: the pool has %s, %s hold %d: running %d workers instead of "
            "concurrency=%d (give the pool concurrency + %d = %d connections)",
            name,
            _connections(size),
            held,
            reserved,
            available,
            wanted,
            reserved,
            wanted + reserved,
            extra=log_extra,
        )
        return available
    return wanted


async def _check_horizon(store: ConsumerStore, conn: asyncpg.Connection) -> None:
    row = await store.horizon_check(conn)
    next_xid = int(row["next_xid"])
    for label, value in (("events", row["max_event_xid"]), ("cursors", row["max_cursor_xid"])):
        if value is not None and int(value) >= next_xid:
            raise HorizonError(
                f"stored {label} carry transaction ids up to {value}, but this cluster "
                f"is at {next_xid}: the data was restored from another cluster (a "
                "logical dump), and events would stay invisible. Advance the cluster's "
                "transaction counter past that id, or renumber the rows; see the "
                "operations guide (backups)"
            )


def _connections(count: int) -> str:
    return f"{count} connection" if count == 1 else f"{count} connections"
