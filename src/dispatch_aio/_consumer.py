"""The consumer runtime: read without gaps, handle in per-subject order, commit outcomes.

Shape of a running consumer (one anyio task group, in a runner task of its own):

- the **listener** (``_listener.Listener``) holds a LISTEN connection and wakes the
  fetcher for subscribed types;
- the **fetcher** reads batches below the transaction horizon (``_consumer_store``),
  turns rows into items, queues them per subject, and moves stored cursors over the
  prefix of events that have an outcome;
- **workers** (``concurrency`` of them) take ready subjects and run their head events as
  a *group*: handlers run one after another in one transaction, then every outcome
  (dedup marker or dead letter) is written and the group commits once. A handler
  failure rolls the group back: the failed event waits for its retry (its subject
  parked, other subjects go on) and the others run again in a later group;
- the **retry clock** unparks subjects when their retry is due.

Teardown: stop fetching; let groups in flight finish up to ``drain_timeout``; cancel the
rest (their transactions roll back; the events run again later). Commits and rollbacks
are shielded from cancellation and bounded by ``commit_timeout``.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import enum
import heapq
import inspect
import json
import logging
import math
import random
import signal
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import anyio
import asyncpg

from ._consumer_store import ConsumerStore, DeadLetterRow
from ._envelope import Event, format_timestamp
from ._errors import (
    ContractError,
    HorizonError,
    LifecycleError,
    UsageError,
)
from ._ids import new_id
from ._listener import Listener
from ._migrate import check_schema
from ._registry import Registry
from ._settings import ConsumerConfig, HandlerOptions
from ._sql import channel_for, replay_channel_for
from ._status import horizon_holders
from ._telemetry import Telemetry
from ._typed import PayloadModel, payload_model_of, with_model_payload  # typed payloads:

__all__ = ["Consumer", "ConsumerState", "ConsumerStats"]

logger = logging.getLogger("dispatch_aio.consumer")

Handler: TypeAlias = Callable[..., Awaitable[None]]

_RECENT_LIMIT = 4096
_IDLE_RELEASE = 1.0  # seconds a worker keeps its connection with nothing to do


class ConsumerState(enum.Enum):
    """Lifecycle of a Consumer: single use."""

    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass
class ConsumerStats:
    """What a consumer has done since it started (this process only)."""

    handled: int = 0
    dedup_hits: int = 0
    retried: int = 0
    dead_lettered: int = 0
    replayed: int = 0
    groups_committed: int = 0
    groups_rolled_back: int = 0
    fetches: int = 0


@dataclass(frozen=True, slots=True)
class _Subscription:
    event_type: str
    handler: Handler
    wants_conn: bool
    retry_delays: tuple[float, ...]
    timeout: float | None
    payload_model: PayloadModel | None = None  # typed payloads: Event[Model] of the handler


@dataclass(slots=True, eq=False)
class _Item:
    """One event on its way to an outcome."""

    position: int
    xid: int
    event_id: str
    event_type: str
    subject: str
    row: asyncpg.Record
    event: Event | None = None
    attempts: int = 0
    # Set when the next group must dead-letter the event instead of handling it.
    dead_letter: DeadLetterRow | None = None
    # A handler without a connection succeeded; only its marker is left to commit.
    succeeded: bool = False
    replay_of: str | None = None
    isolate: bool = False
    done: bool = False


@dataclass(slots=True, eq=False)
class _Subject:
    items: list[_Item] = field(default_factory=list)
    busy: bool = False
    parked: bool = False
    queued: bool = False


@dataclass(slots=True)
class _TypeCursor:
    read: tuple[int, int]
    committed: tuple[int, int]
    flushed: tuple[int, int]
    entries: collections.deque[_Item] = field(default_factory=collections.deque)


class _Done:
    """A cursor entry for an event that already had an outcome when read."""

    __slots__ = ("done", "position", "xid")

    def __init__(self, xid: int, position: int) -> None:
        self.xid = xid
        self.position = position
        self.done = True


_EVENT_FIELDS = frozenset(Event.model_fields)


def _build_event(values: dict[str, Any]) -> Event:
    """An Event from values already validated (what ``model_construct`` does, minus its
    per-field default handling: every field is given). Runs once per consumed event."""
    event = Event.__new__(Event)
    object.__setattr__(event, "__dict__", values)
    object.__setattr__(event, "__pydantic_fields_set__", set(_EVENT_FIELDS))
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event


def _is_infrastructure(exc: BaseException, conn: asyncpg.Connection | None) -> bool:
    if isinstance(
        exc,
        (
            asyncpg.PostgresConnectionError,
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.AdminShutdownError,
            asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError,
            asyncpg.SerializationError,
            asyncpg.DeadlockDetectedError,
        ),
    ):
        return True
    return conn is not None and conn.is_closed()


class Consumer:
    """Consumes events for one named consumer; handlers registered with :meth:`on`.

    ::

        consumer = Consumer(pool, name="coaching", concurrency=16)

        @consumer.on("credit.locked")
        async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute("...")   # commits with the event's dedup marker

        async with consumer:
            await consumer.wait()

    The pool needs ``concurrency + 2`` connections to run at full speed. A handler that
    takes a connection runs inside the transaction that records its event's outcome:
    its writes commit if and only if the event is marked handled.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        name: str | None = None,
        *,
        config: ConsumerConfig | None = None,
        registry: Registry | None = None,
        telemetry: Telemetry | None = None,
        listen_connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
        **options: Any,
    ) -> None:
        if config is None:
            if name is None:
                raise UsageError("Consumer needs a name: Consumer(pool, name='coaching')")
            config = ConsumerConfig(name=name, **options)
        elif name is not None or options:
            raise UsageError("pass either config=ConsumerConfig(...) or name and options")
        self.config = config
        self.name = config.name
        self.pool = pool
        self.registry = registry if registry is not None else Registry.load()
        self.telemetry = telemetry if telemetry is not None else Telemetry.default()
        self.stats = ConsumerStats()
        self._listen_connect = listen_connect
        self._subscriptions: dict[str, _Subscription] = {}
        self._state = ConsumerState.NEW
        self._log = {"consumer": self.name}
        self._rng = random.Random()

    # -- registration --------------------------------------------------------------

    def on(
        self,
        event_type: str,
        *,
        retry_delays: Iterable[float] | None = None,
        timeout: float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register ``async def handler(event)`` or ``async def handler(event, conn)``.

        ``retry_delays`` and ``timeout`` override the consumer's for this handler.
        """
        if self._state is not ConsumerState.NEW:
            raise LifecycleError("handlers can only be added before the consumer starts")
        if callable(event_type):  # adoption: @consumer.on written without its event type
            raise UsageError(
                '@consumer.on needs the event type: write @consumer.on("order.placed")'
            )
        self.registry.current_version(event_type)  # UnknownEventTypeError when unknown
        if event_type in self._subscriptions:
            raise UsageError(f"consumer {self.name!r} already has a handler for {event_type!r}")
        opts = HandlerOptions(
            retry_delays=tuple(retry_delays) if retry_delays is not None else None,
            timeout=timeout,
        )

        def register(handler: Handler) -> Handler:
            if not inspect.iscoroutinefunction(handler):
                raise UsageError(f"handler for {event_type!r} must be an async function")
            positional = [
                p
                for p in inspect.signature(handler).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if len(positional) not in (1, 2):
                raise UsageError(f"handler for {event_type!r} must take (event) or (event, conn)")
            self._subscriptions[event_type] = _Subscription(
                event_type=event_type,
                handler=handler,
                wants_conn=len(positional) == 2,
                retry_delays=opts.retry_delays
                if opts.retry_delays is not None
                else self.config.retry_delays,
                timeout=opts.timeout if opts.timeout is not None else self.config.handler_timeout,
                payload_model=payload_model_of(handler),  # typed payloads: read once, here
            )
            return handler

        return register

    @property
    def state(self) -> ConsumerState:
        """Where the consumer is in its lifecycle."""
        return self._state

    @property
    def event_types(self) -> list[str]:
        """The subscribed event types."""
        return list(self._subscriptions)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Check the schema and horizon, then run in the background until stopped."""
        if self._state is not ConsumerState.NEW:
            raise LifecycleError(
                f"consumer {self.name!r} is {self._state.value}; "
                "a Consumer runs once: make a new one"
            )
        if not self._subscriptions:
            raise UsageError(f"consumer {self.name!r} has no handlers: add some with @consumer.on")
        self._state = ConsumerState.RUNNING
        try:
            await self._prepare()
        except BaseException:
            self._state = ConsumerState.CLOSED
            raise
        self._untrack_backlog = self.telemetry.track_backlog(
            self.name,
            self.event_types,
            lambda: [i.event_type for i in list(self._inflight.values())],
        )
        self._runner = asyncio.create_task(self._run(), name=f"dispatch-aio consumer {self.name}")
        started = asyncio.ensure_future(self._started.wait())
        done, _ = await asyncio.wait({started, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        if self._runner in done:
            started.cancel()
            self._state = ConsumerState.CLOSED
            self._runner.result()  # raises what stopped it

    def stop(self) -> None:
        """Ask the consumer to drain and stop; returns at once (``wait()`` for the end)."""
        if self._state is ConsumerState.RUNNING:
            self._state = ConsumerState.DRAINING
            self._stop_requested.set()
            self._wake.set()
            self._capacity.set()
            self._release_workers()

    def abort(self) -> None:
        """Stop now: cancel handlers in flight (their transactions roll back)."""
        self.stop()
        self._abort_requested.set()

    async def wait(self) -> None:
        """Wait until the consumer has stopped; re-raises what stopped it, if anything."""
        if self._state is ConsumerState.NEW:
            raise LifecycleError("the consumer has not started")
        await asyncio.shield(self._runner)

    async def aclose(self) -> None:
        """Stop, drain and release everything. Idempotent."""
        if self._state is ConsumerState.NEW:
            self._state = ConsumerState.CLOSED
            return
        self.stop()
        if hasattr(self, "_runner"):
            await self.wait()

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def run(self) -> None:
        """Run as a worker process: until SIGTERM or SIGINT (a second one aborts)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)

        def on_signal() -> None:
            if self._state is ConsumerState.RUNNING:
                logger.info("signal received: draining", extra=self._log)
                self.stop()
            else:
                logger.warning("second signal: aborting", extra=self._log)
                self.abort()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal)
        try:
            async with self:
                await self.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    # -- start-up ------------------------------------------------------------------

    async def _prepare(self) -> None:
        config = self.config
        self._store = ConsumerStore(config.db_schema, self.name, self.event_types)
        self._wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self._started = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._abort_requested = asyncio.Event()
        self._idle = asyncio.Event()
        self._ready: asyncio.Queue[str | None] = asyncio.Queue()
        self._subjects: dict[str, _Subject] = {}
        self._inflight: dict[int, _Item] = {}
        self._replays_inflight: set[str] = set()
        self._recent: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._retry_heap: list[tuple[float, int, str]] = []
        self._retry_wake = asyncio.Event()
        self._retry_seq = 0
        self._groups_running = 0
        self._groups_idle = asyncio.Event()
        self._groups_idle.set()
        self._replays_due = True
        self._waiting_above_horizon = False
        self._tg_for_side_work: anyio.abc.TaskGroup | None = None
        self._fetch_seq = 0
        self._idle_seq = -1
        self._fetch_limit = config.batch_size
        self._workers = self._worker_count()
        self._max_buffered = max(4 * config.batch_size, self._workers * config.max_group)
        self._refill_below = max(config.batch_size, self._max_buffered // 2)
        self._channel = channel_for(config.db_schema)
        self._replay_channel = replay_channel_for(config.db_schema)
        async with self.pool.acquire(timeout=config.acquire_timeout) as conn:
            await check_schema(conn, config.db_schema)
            await self._check_horizon(conn)
            await self._store.init_cursors(conn, from_now=config.start_from == "now")
            stored = await self._store.read_cursors(conn)
        self._cursors = {t: _TypeCursor(read=c, committed=c, flushed=c) for t, c in stored.items()}

    def _worker_count(self) -> int:
        """``concurrency``, or fewer when the pool cannot give each worker a connection.

        Each worker holds a connection while it runs a group and the fetcher holds one:
        more workers than the pool can serve would only wait on the pool.
        """
        wanted = self.config.concurrency
        get_max_size = getattr(self.pool, "get_max_size", None)
        if get_max_size is None:
            return wanted
        available = max(1, int(get_max_size()) - 1)
        if available < wanted:
            logger.warning(
                "the pool has %d connections: running %d workers instead of concurrency=%d "
                "(give the pool concurrency + 2 connections)",
                available + 1,
                available,
                wanted,
                extra=self._log,
            )
            return available
        return wanted

    async def _check_horizon(self, conn: asyncpg.Connection) -> None:
        row = await self._store.horizon_check(conn)
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

    async def _run(self) -> None:
        config = self.config
        try:
            async with anyio.create_task_group() as tg:
                if config.listen:
                    listener = Listener(
                        self._connect_listener,
                        [self._channel, self._replay_channel],
                        self._on_notify,
                        self._on_listen_connected,
                        reconnect_delays=config.listen_reconnect_delays,
                        heartbeat_interval=config.heartbeat_interval,
                        heartbeat_timeout=config.heartbeat_timeout,
                        log_extra=self._log,
                    )
                    self.listener: Listener | None = listener
                    await tg.start(listener.run)
                else:
                    self.listener = None
                tg.start_soon(self._retry_clock)
                await self._supervise()
                tg.cancel_scope.cancel()
        finally:
            self._state = ConsumerState.CLOSED
            self._untrack_backlog()
            logger.info("consumer stopped", extra=self._log)

    async def _supervise(self) -> None:
        """Run fetcher and workers; on stop, drain then cancel what is left."""
        async with anyio.create_task_group() as workers:
            workers.start_soon(self._fetch_loop)
            for _ in range(self._workers):
                workers.start_soon(self._worker)
            self._started.set()
            logger.info("consumer started for %s", ", ".join(self.event_types), extra=self._log)
            await self._stop_requested.wait()
            with anyio.move_on_after(self.config.drain_timeout):
                async with anyio.create_task_group() as waiter:
                    waiter.start_soon(self._wait_groups_idle, waiter.cancel_scope)
                    await self._abort_requested.wait()
                    waiter.cancel_scope.cancel()
            workers.cancel_scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.commit_timeout):
            await self._flush_cursors()

    async def _wait_groups_idle(self, scope: anyio.CancelScope) -> None:
        await self._groups_idle.wait()
        scope.cancel()

    async def _connect_listener(self) -> asyncpg.Connection:
        if self._listen_connect is not None:
            return await self._listen_connect()
        pool = self.pool
        # The pool's own connect function and arguments: same server, same settings.
        return await pool._connect(*pool._connect_args, **pool._connect_kwargs)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == self._replay_channel:
            if payload == self.name:
                self._replays_due = True
                self._wake.set()
        elif payload in self._subscriptions:
            self._wake.set()

    def _on_listen_connected(self) -> None:
        # Notifications sent while disconnected are lost: read everything once more.
        self._replays_due = True
        self._wake.set()

    # -- fetching ------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        config = self.config
        backoff = 0.0
        failures = 0
        conn: asyncpg.Connection | None = None
        held_since: float | None = None
        try:
            while not self._stop_requested.is_set():
                if len(self._inflight) >= self._refill_below:
                    # Enough buffered: read again once the workers have used half of it,
                    # in one large read rather than many small ones.
                    self._capacity.clear()
                    await self._capacity.wait()
                    continue
                try:
                    if conn is None:
                        conn = await self.pool.acquire(timeout=config.acquire_timeout)
                    await self._flush_cursors(conn)
                    full = await self._fetch_once(conn)
                    failures = 0
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    TimeoutError,
                ) as exc:
                    failures += 1
                    delay = min(config.poll_interval, 0.1 * 2**failures)
                    logger.warning(
                        "fetch failed (%s: %s); again in %.1fs",
                        type(exc).__name__,
                        exc,
                        delay,
                        extra=self._log,
                    )
                    if conn is not None:
                        broken, conn = conn, None
                        await self._release(broken)
                    await self._sleep_or_wake(delay)
                    continue
                if full:
                    backoff = 0.0
                    continue
                if self._waiting_above_horizon:
                    # Committed events wait behind an older open transaction: look again soon.
                    now = time.monotonic()
                    if held_since is None:
                        held_since = now
                    elif now - held_since >= config.horizon_warning_after:
                        held_since = now  # warn again after another interval
                        await self._warn_horizon(conn)
                    backoff = min(max(backoff * 2, 0.002), 0.1)
                    await self._sleep_or_wake(backoff)
                    continue
                held_since = None
                backoff = 0.0
                if not self._inflight and not self._retry_heap and not self._replays_inflight:
                    self._idle_seq = self._fetch_seq
                    self._idle.set()
                await self._sleep_or_wake(config.poll_interval)
        finally:
            if conn is not None:
                await self._release(conn)

    async def _warn_horizon(self, conn: asyncpg.Connection | None) -> None:
        """Log the open transactions that have kept committed events from this consumer."""
        if conn is None:
            return
        try:
            holders = await horizon_holders(conn, schema=self.config.db_schema)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return
        for holder in holders[:5]:
            who = f"pid {holder.pid}" if holder.pid is not None else f"prepared {holder.gid!r}"
            logger.warning(
                "committed events wait behind transaction %s (%s, database %s, open %.0fs)",
                holder.xid,
                who,
                holder.database,
                holder.age_seconds,
                extra={**self._log, "pid": holder.pid, "age_seconds": holder.age_seconds},
            )

    async def _sleep_or_wake(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wake.wait()
        self._wake.clear()

    async def _fetch_once(self, conn: asyncpg.Connection) -> bool:
        """One read; returns True when the batch was full (more is probably waiting)."""
        self._idle.clear()
        self._wake.clear()
        self._fetch_seq += 1
        cursors = {t: c.read for t, c in self._cursors.items()}
        # A full batch means a backlog: read ahead in bigger steps (up to the buffer).
        limit = self._fetch_limit
        result = await self._store.fetch(conn, cursors, limit)
        self.stats.fetches += 1
        self._waiting_above_horizon = result.waiting_above_horizon
        for row in result.pulled:
            position = row["position"]
            if row["handled"] or position in self._inflight or position in self._recent:
                continue
            self._enqueue(self._make_item(row))
        for row in result.candidates:
            xid, position = row["xid"], row["position"]
            cursor = self._cursors[row["event_type"]]
            cursor.read = (xid, position)
            if row["handled"]:
                cursor.entries.append(_Done(xid, position))  # type: ignore[arg-type]
                self.stats.dedup_hits += 1
                self.telemetry.dedup_hit(row["event_type"], self.name)
                continue
            existing = self._inflight.get(position)
            if existing is not None:
                cursor.entries.append(existing)
                continue
            if position in self._recent:
                cursor.entries.append(_Done(xid, position))  # type: ignore[arg-type]
                continue
            item = self._make_item(row)
            cursor.entries.append(item)
            self._enqueue(item)
        for cursor in self._cursors.values():
            self._advance(cursor)
        if self._replays_due:
            self._replays_due = False
            await self._fetch_replays(conn)
        full = len(result.candidates) >= limit
        room = max(self.config.batch_size, self._max_buffered - len(self._inflight))
        self._fetch_limit = room if full else self.config.batch_size
        return full

    async def _fetch_replays(self, conn: asyncpg.Connection) -> None:
        for row in await self._store.fetch_replays(conn, self.config.batch_size):
            dead_letter_id = row["dead_letter_id"]
            if dead_letter_id in self._replays_inflight:
                continue
            self._replays_inflight.add(dead_letter_id)
            item = self._make_item(row)
            item.replay_of = dead_letter_id
            item.isolate = True
            # A replay is outside the subject's order: it runs on a lane of its own.
            item.subject = f"\x00replay:{dead_letter_id}"
            self._enqueue(item, track=False)

    def _make_item(self, row: asyncpg.Record) -> _Item:
        item = _Item(
            position=row["position"],
            xid=row["xid"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            subject=row["subject"],
            row=row,
        )
        try:
            item.event = self._decode(row)
            # typed payloads: parsed here, so that a payload the model refuses is
            # dead-lettered at once, like one that fails its schema (a ValueError).
            subscription = self._subscriptions.get(item.event_type)
            if subscription is not None and subscription.payload_model is not None:
                item.event = with_model_payload(item.event, subscription.payload_model)
        except (ContractError, ValueError, RecursionError, TypeError) as exc:
            # Retrying cannot fix a payload: dead-letter it at once.
            item.dead_letter = self._dead_letter_row(item, exc, attempts=0)
        return item

    def _decode(self, row: asyncpg.Record) -> Event:
        payload = json.loads(row["payload"])
        if not isinstance(payload, dict):
            raise ValueError("payload is not a JSON object")
        event_type, version = row["event_type"], row["schema_version"]
        self.registry.validate_payload(event_type, version, payload)
        return _build_event(
            {
                "event_id": row["event_id"],
                "event_type": event_type,
                "schema_version": version,
                "occurred_at": row["occurred_at"],
                "tenant_id": row["tenant_id"],
                "producer": row["producer"],
                "subject": row["subject"],
                "actor": row["actor"],
                "payload": payload,
                "correlation_id": row["correlation_id"],
                "causation_id": row["causation_id"],
                "traceparent": row["traceparent"],
                "position": row["position"],
                "attempt": 1,
            }
        )

    def _enqueue(self, item: _Item, *, track: bool = True) -> None:
        if track:
            self._inflight[item.position] = item
        subject = self._subjects.get(item.subject)
        if subject is None:
            subject = self._subjects[item.subject] = _Subject()
        bisect.insort(subject.items, item, key=lambda i: i.position)
        self._mark_ready(item.subject, subject)

    def _mark_ready(self, key: str, subject: _Subject) -> None:
        if subject.items and not (subject.busy or subject.parked or subject.queued):
            subject.queued = True
            self._ready.put_nowait(key)

    def _advance(self, cursor: _TypeCursor) -> None:
        entries = cursor.entries
        last = None
        while entries and entries[0].done:
            last = entries.popleft()
        if last is not None:
            cursor.committed = (last.xid, last.position)

    async def _flush_cursors(self, conn: asyncpg.Connection | None = None) -> None:
        """Store cursors that moved. A low-water mark: losing one only costs a re-read."""
        moved = {t: c.committed for t, c in self._cursors.items() if c.committed > c.flushed}
        if not moved:
            return
        if conn is None:
            async with self.pool.acquire(timeout=self.config.acquire_timeout) as own:
                await self._store.advance_cursors(own, moved)
        else:
            await self._store.advance_cursors(conn, moved)
        for event_type, value in moved.items():
            self._cursors[event_type].flushed = value

    # -- workers -------------------------------------------------------------------

    def _release_workers(self) -> None:
        for _ in range(self._workers):
            self._ready.put_nowait(None)

    async def _worker(self) -> None:
        """Run groups; keep a pool connection while work keeps coming, give it back when idle."""
        conn: asyncpg.Connection | None = None
        try:
            while True:
                if conn is None:
                    key = await self._ready.get()
                else:
                    try:
                        key = await asyncio.wait_for(self._ready.get(), _IDLE_RELEASE)
                    except TimeoutError:
                        # Idle for a while: give the connection back to the pool.
                        idle, conn = conn, None
                        await self._release(idle)
                        continue
                if key is None or self._stop_requested.is_set():
                    return
                group = self._take_group(key)
                if not group:
                    continue
                self._groups_running += 1
                self._groups_idle.clear()
                try:
                    if conn is None:
                        conn = await self._acquire_for(group)
                    if conn is not None and not await self._run_group(group, conn):
                        broken, conn = conn, None
                        await self._release(broken)  # the pool replaces it
                finally:
                    self._groups_running -= 1
                    self._after_group(group)
                    if self._groups_running == 0:
                        self._groups_idle.set()
        finally:
            if conn is not None:
                await self._release(conn)

    async def _acquire_for(self, group: list[_Item]) -> asyncpg.Connection | None:
        """A pool connection, or None (the group requeued) when the pool cannot give one."""
        try:
            conn: asyncpg.Connection = await self.pool.acquire(timeout=self.config.acquire_timeout)
            return conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self._requeue(group)
            logger.warning(
                "no database connection for %d events (%s: %s); they will run again",
                len(group),
                type(exc).__name__,
                exc,
                extra=self._log,
            )
            await anyio.sleep(0.5)
            return None

    def _take_group(self, first: str) -> list[_Item]:
        """Head events of ready subjects, for one transaction; their subjects become busy.

        A group takes at most ``max_group`` events, and no more than a fair share of what
        is waiting, so that a small backlog still spreads over the workers.
        """
        config = self.config
        limit = min(config.max_group, max(1, math.ceil(len(self._inflight) / self._workers)))
        group: list[_Item] = []
        key: str | None = first
        while key is not None:
            subject = self._subjects.get(key)
            if subject is not None:
                subject.queued = False
                if subject.items and not subject.busy and not subject.parked:
                    if subject.items[0].isolate:
                        if group:
                            self._mark_ready(key, subject)  # for the next worker
                            break
                        subject.busy = True
                        group.append(subject.items.pop(0))
                        break
                    subject.busy = True
                    while subject.items and len(group) < limit and not subject.items[0].isolate:
                        group.append(subject.items.pop(0))
            if len(group) >= limit:
                break
            try:
                key = self._ready.get_nowait()
            except asyncio.QueueEmpty:
                break
            if key is None:
                self._ready.put_nowait(None)  # a stop signal: leave it for a worker to see
                break
        return group

    def _after_group(self, group: list[_Item]) -> None:
        """Release the group's subjects and put their next events up for a worker."""
        seen: set[str] = set()
        for item in group:
            if item.subject in seen:
                continue
            seen.add(item.subject)
            subject = self._subjects.get(item.subject)
            if subject is None:
                continue
            subject.busy = False
            if subject.items:
                self._mark_ready(item.subject, subject)
            elif not subject.parked:
                del self._subjects[item.subject]
        if len(self._inflight) < self._refill_below:
            self._capacity.set()
        self._wake.set()

    def _requeue(self, items: Iterable[_Item]) -> None:
        for item in items:
            subject = self._subjects.get(item.subject)
            if subject is None:
                subject = self._subjects[item.subject] = _Subject()
            bisect.insort(subject.items, item, key=lambda i: i.position)

    async def _run_group(self, group: list[_Item], conn: asyncpg.Connection) -> bool:
        """Handle a group on ``conn``; False when the connection broke (it is terminated)."""
        transaction: Any = None
        ran: list[_Item] = []
        try:
            failure: tuple[_Item, BaseException] | None = None
            for item in group:
                if item.dead_letter is not None or item.succeeded:
                    continue
                subscription = self._subscriptions[item.event_type]
                if subscription.wants_conn and transaction is None:
                    transaction = conn.transaction()
                    await transaction.start()
                try:
                    await self._call(subscription, item, conn)
                except Exception as exc:
                    if _is_infrastructure(exc, conn):
                        raise
                    failure = (item, exc)
                    break
                ran.append(item)
            if failure is not None:
                await self._rollback(transaction)
                transaction = None
                self._fail(group, ran, *failure)
                return True
            statements = (
                any(i.dead_letter is not None for i in group)
                + any(i.replay_of is not None for i in group)
                + any(i.replay_of is None for i in group)
            )
            if transaction is None and statements > 1:
                transaction = conn.transaction()
                await transaction.start()
            if not await self._record(conn, group, in_transaction=transaction is not None):
                await self._rollback(transaction)
                return True
            if transaction is not None:
                await self._commit(transaction)
                transaction = None
            self._finish(group)
            return True
        except BaseException as exc:
            if transaction is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await self._rollback(transaction)
            self.stats.groups_rolled_back += 1
            self._undo(ran)
            self._requeue(group)
            if isinstance(exc, Exception) and _is_infrastructure(exc, conn):
                logger.warning(
                    "database failed under a group of %d events (%s: %s); they will run again",
                    len(group),
                    type(exc).__name__,
                    exc,
                    extra=self._log,
                )
                await anyio.sleep(0.2)
                if isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
                    return not conn.is_closed()  # rolled back above; the connection is fine
                conn.terminate()
                return False
            if isinstance(exc, asyncpg.InFailedSQLTransactionError | asyncpg.PostgresError):
                # A handler swallowed a database error, or an outcome could not be written:
                # run these events one per transaction so the culprit shows itself.
                for item in group:
                    item.isolate = True
                logger.warning(
                    "a group of %d events failed to commit (%s: %s); isolating them",
                    len(group),
                    type(exc).__name__,
                    exc,
                    extra=self._log,
                )
                return not conn.is_closed()
            raise

    async def _call(
        self, subscription: _Subscription, item: _Item, conn: asyncpg.Connection
    ) -> None:
        assert item.event is not None
        item.attempts += 1
        event = item.event
        if item.attempts != event.attempt:
            event = item.event = event.model_copy(update={"attempt": item.attempts})
        started = time.time()
        end_to_end_ms = (started - event.occurred_at.timestamp()) * 1000.0
        telemetry = self.telemetry
        if telemetry.tracing_enabled():
            with telemetry.consume_span(
                event_type=item.event_type,
                event_id=item.event_id,
                consumer=self.name,
                attempt=item.attempts,
                traceparent=event.traceparent,
            ) as span:
                try:
                    await self._invoke(subscription, event, conn)
                except Exception as exc:
                    telemetry.mark_error(span, exc)
                    raise
        else:
            await self._invoke(subscription, event, conn)
        telemetry.observe_latency(
            item.event_type, self.name, end_to_end_ms, (time.time() - started) * 1000.0
        )

    @staticmethod
    async def _invoke(subscription: _Subscription, event: Event, conn: asyncpg.Connection) -> None:
        # asyncio.timeout, not an anyio cancel scope: a tenth of the cost per call, and
        # this runs once per event. TimeoutError counts as a handler failure.
        async with asyncio.timeout(subscription.timeout):
            if subscription.wants_conn:
                await subscription.handler(event, conn)
            else:
                await subscription.handler(event)

    async def _record(
        self, conn: asyncpg.Connection, group: list[_Item], *, in_transaction: bool
    ) -> bool:
        """Write the group's outcomes; False when another process finished some first.

        Outside a transaction (one statement, no handler wrote) the markers that went in
        are already committed: those events are done, the others were done elsewhere.
        """
        letters = [i.dead_letter for i in group if i.dead_letter is not None]
        if letters:
            await self._store.record_dead_letters(conn, letters)
        replays = [i for i in group if i.replay_of is not None and i.dead_letter is None]
        if replays:
            finished = await self._store.finish_replays(conn, [i.replay_of for i in replays])  # type: ignore[misc]
            lost = [i for i in replays if i.replay_of not in finished]
            if lost:
                for item in lost:
                    item.done = True
                    self._replays_inflight.discard(item.replay_of or "")
                self._requeue(i for i in group if i not in lost)
                self._reset_for_rerun(group)
                return False
        regular = [i for i in group if i.replay_of is None]
        if regular:
            ids = [i.event_id for i in regular]
            outcomes = [
                "dead_lettered" if i.dead_letter is not None else "handled" for i in regular
            ]
            inserted = await self._store.record_outcomes(conn, ids, outcomes)
            if len(inserted) != len(regular) and not in_transaction:
                for item in regular:
                    if item.event_id not in inserted:
                        self._complete(item, counted=False)
                        self.stats.dedup_hits += 1
                        self.telemetry.dedup_hit(item.event_type, self.name)
                return True
            if len(inserted) != len(regular):
                # Another process of this consumer finished some of these first: drop our
                # effects for the whole group; the others run again.
                others = [i for i in regular if i.event_id in inserted]
                for item in regular:
                    if item.event_id not in inserted:
                        self._complete(item, counted=False)
                        self.stats.dedup_hits += 1
                        self.telemetry.dedup_hit(item.event_type, self.name)
                self._requeue(others + [i for i in group if i.replay_of is not None])
                self._reset_for_rerun(group)
                return False
        return True

    def _reset_for_rerun(self, group: list[_Item]) -> None:
        self._undo([i for i in group if not i.done and i.dead_letter is None and not i.succeeded])

    def _undo(self, ran: list[_Item]) -> None:
        """Handlers in a rolled-back group: their attempt neither failed nor counted."""
        for item in ran:
            if self._subscriptions[item.event_type].wants_conn:
                item.attempts -= 1  # its writes were rolled back: it runs again
            else:
                item.succeeded = True  # nothing to undo: only its marker is left to write

    async def _commit(self, transaction: Any) -> None:
        with anyio.CancelScope(shield=True), anyio.fail_after(self.config.commit_timeout):
            await transaction.commit()

    async def _rollback(self, transaction: Any) -> None:
        if transaction is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.commit_timeout):
            await transaction.rollback()

    async def _release(self, conn: asyncpg.Connection) -> None:
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(self.config.commit_timeout):
                    await self.pool.release(conn)
            except Exception:
                conn.terminate()

    def _finish(self, group: list[_Item]) -> None:
        self.stats.groups_committed += 1
        for item in group:
            if item.done:
                continue  # finished by another process of this consumer
            if item.replay_of is not None and item.dead_letter is None:
                self.stats.replayed += 1
                self._replays_inflight.discard(item.replay_of)
                item.done = True
                self.telemetry.consumed(
                    item.event_type, self.name, item.row["producer"], "replayed"
                )
                continue
            self._complete(item)

    def _complete(self, item: _Item, *, counted: bool = True) -> None:
        item.done = True
        self._inflight.pop(item.position, None)
        self._recent[item.position] = None
        if len(self._recent) > _RECENT_LIMIT:
            self._recent.popitem(last=False)
        cursor = self._cursors.get(item.event_type)
        if cursor is not None:
            self._advance(cursor)
        if not counted:
            return
        producer = item.row["producer"]
        if item.dead_letter is not None:
            self.stats.dead_lettered += 1
            reason = "exhausted" if item.dead_letter.attempts else "invalid"
            self.telemetry.dead_lettered(item.event_type, self.name, reason)
            self.telemetry.consumed(item.event_type, self.name, producer, "dead_lettered")
        else:
            self.stats.handled += 1
            self.telemetry.consumed(item.event_type, self.name, producer, "handled")

    def _fail(
        self, group: list[_Item], ran: list[_Item], failed: _Item, exc: BaseException
    ) -> None:
        """A handler raised: retry it later or dead-letter it; the rest run again."""
        self.stats.groups_rolled_back += 1
        self._undo(ran)
        others = [i for i in group if i is not failed]
        self._requeue(others)
        delays = self._subscriptions[failed.event_type].retry_delays
        log = {
            **self._log,
            "event_type": failed.event_type,
            "event_id": failed.event_id,
            "attempt": failed.attempts,
        }
        if failed.attempts <= len(delays):
            delay = delays[failed.attempts - 1] * (
                1 + self._rng.uniform(0, self.config.retry_jitter)
            )
            self.stats.retried += 1
            self.telemetry.retried(failed.event_type, self.name)
            logger.warning(
                "handler failed (%s: %s); retry %d in %.2fs",
                type(exc).__name__,
                exc,
                failed.attempts,
                delay,
                extra=log,
            )
            self._requeue([failed])
            self._park(failed.subject, delay)
            return
        logger.error(
            "handler failed %d times (%s: %s); dead-lettering",
            failed.attempts,
            type(exc).__name__,
            exc,
            extra=log,
        )
        if failed.replay_of is not None:
            self._replay_failed(failed, exc)
            return
        failed.dead_letter = self._dead_letter_row(failed, exc, attempts=failed.attempts)
        self._requeue([failed])

    def _replay_failed(self, item: _Item, exc: BaseException) -> None:
        item.done = True
        subject = self._subjects.get(item.subject)
        if subject is not None and not subject.items:
            del self._subjects[item.subject]
        assert self._tg_for_side_work is not None
        self._tg_for_side_work.start_soon(self._store_replay_failure, item, exc)

    async def _store_replay_failure(self, item: _Item, exc: BaseException) -> None:
        """Record a failed replay; the replay counts as in flight until it is recorded."""
        try:
            async with self.pool.acquire(timeout=self.config.acquire_timeout) as conn:
                await self._store.fail_replay(
                    conn, item.replay_of or "", f"{type(exc).__name__}: {exc}", item.attempts
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            # The row stays pending: the next read of replays tries the event again.
            logger.warning(
                "could not record a failed replay (%s: %s)",
                type(error).__name__,
                error,
                extra={**self._log, "event_id": item.event_id},
            )
        finally:
            self._replays_inflight.discard(item.replay_of or "")

    def _dead_letter_row(self, item: _Item, exc: BaseException, *, attempts: int) -> DeadLetterRow:
        row = item.row
        envelope = {
            "event_id": row["event_id"],
            "event_type": row["event_type"],
            "schema_version": row["schema_version"],
            "occurred_at": format_timestamp(row["occurred_at"])
            if isinstance(row["occurred_at"], datetime)
            else str(row["occurred_at"]),
            "tenant_id": row["tenant_id"],
            "producer": row["producer"],
            "subject": row["subject"],
            "actor": row["actor"],
            "correlation_id": row["correlation_id"],
            "causation_id": row["causation_id"],
            "traceparent": row["traceparent"],
        }
        # The payload goes in as stored text: it may be too deep for Python to parse.
        head = json.dumps({k: v for k, v in envelope.items() if v is not None})
        encoded = head[:-1] + ', "payload": ' + row["payload"] + "}"
        return DeadLetterRow(
            dead_letter_id=new_id("dlq"),
            event_id=row["event_id"],
            event_type=row["event_type"],
            schema_version=row["schema_version"],
            tenant_id=row["tenant_id"],
            subject=row["subject"],
            envelope=encoded,
            error_type=type(exc).__name__,
            error_message=str(exc)[:4000] or type(exc).__name__,
            error_traceback="".join(traceback.format_exception(exc))[-16000:],
            attempts=attempts,
        )

    # -- retries -------------------------------------------------------------------

    def _park(self, key: str, delay: float) -> None:
        subject = self._subjects.get(key)
        if subject is None:
            return
        subject.parked = True
        self._retry_seq += 1
        heapq.heappush(self._retry_heap, (time.monotonic() + delay, self._retry_seq, key))
        self._retry_wake.set()

    async def _retry_clock(self) -> None:
        async with anyio.create_task_group() as side:
            self._tg_for_side_work = side
            while True:
                self._retry_wake.clear()
                now = time.monotonic()
                while self._retry_heap and self._retry_heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._retry_heap)
                    subject = self._subjects.get(key)
                    if subject is not None:
                        subject.parked = False
                        self._mark_ready(key, subject)
                timeout = self._retry_heap[0][0] - now if self._retry_heap else None
                with anyio.move_on_after(timeout if timeout is not None else math.inf):
                    await self._retry_wake.wait()

    # -- observation ---------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until a read begun after this call found nothing, and nothing is in flight.

        Events committed before the call are handled (or dead-lettered) when it returns.
        """
        if self._state is ConsumerState.NEW:
            raise LifecycleError("the consumer has not started")
        started = self._fetch_seq
        self._replays_due = True  # a replay may have been asked for just before
        while True:
            self._wake.set()
            waiter = asyncio.ensure_future(self._idle.wait())
            done, _ = await asyncio.wait(
                {waiter, self._runner}, return_when=asyncio.FIRST_COMPLETED
            )
            if self._runner in done:
                waiter.cancel()
                self._runner.result()
                raise LifecycleError("the consumer stopped before it was idle")
            if self._idle_seq > started:
                return
            self._idle.clear()

    def backlog(self) -> int:
        """Events read but not yet given an outcome (in this process)."""
        return len(self._inflight)
