"""The consumer runtime: read without gaps, handle in per-subject order, commit outcomes.

Shape of a running consumer (one anyio task group, in a runner task of its own), its
parts built and wired by the **start-up** (``_startup``):

- the **listener** (``_listener``) holds a LISTEN connection and wakes the fetch loop
  for subscribed types (and for replays of this consumer's dead letters), as wired by
  ``_wakeups``;
- the **read loop** (``_reader``) asks the **fetcher** (``_fetcher``) to read a batch
  below the transaction horizon and hand it to the **scheduler** (``_scheduler``,
  pure), and stores the cursors the scheduler has moved; it pauses while the buffer is
  full;
- **workers** (``_workers``, ``concurrency`` of them) take groups from the scheduler and
  run them with the **group runner** (``_runner``): handlers in one transaction, one
  commit; **outcomes** (``_outcomes``) carries each event's outcome out: statistics,
  logs, retries with their stored counts, dead letters;
- the **retry clock** (``_workers``) unparks subjects when their retry is due;
- the **member task** (``_members``) keeps this process's partition leases, and the
  **hand-over** (``_handover``) makes the read path follow what it holds.

Failures are classified at the driver boundary (``_storage``): infrastructure failures
reconnect with a capped exponential backoff and jitter and run the work again (no
attempt counted); an event's own failure counts an attempt; anything else is a bug: the
consumer becomes FAILED, ``wait()`` raises :class:`~dispatch_aio.ConsumerFailedError`
and ``dispatch-aio worker`` exits non-zero.

Teardown: stop fetching; let groups in flight finish up to ``drain_timeout``; cancel the
rest (their transactions roll back; the events run again later). Commits and rollbacks
are shielded from cancellation and bounded by ``commit_timeout``.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import anyio.abc
import asyncpg

from .._errors import ConsumerFailedError, LifecycleError, UsageError
from .._registry import Registry
from .._storage import FailureKind, classify
from .._telemetry import Telemetry
from .._typed import payload_model_of
from ._config import ConsumerConfig, HandlerOptions
from ._handlers import Handler, Subscription
from ._listener import Listener
from ._outcomes import ConsumerStats
from ._signals import drain_on_signals
from ._startup import prepare
from ._wakeups import Wakeups

__all__ = ["Consumer", "ConsumerState", "ConsumerStats"]

logger = logging.getLogger("dispatch_aio.consumer")


class ConsumerState(enum.Enum):
    """Lifecycle of a Consumer: single use. FAILED: a bug stopped it (``wait()`` raises)."""

    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"
    FAILED = "failed"


class Consumer:
    """Consumes events for one named consumer; handlers registered with :meth:`on`.

    ::

        consumer = Consumer(pool, name="coaching", concurrency=16)

        @consumer.on("credit.locked")
        async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute("...")   # commits with the event's dedup marker

        async with consumer:
            await consumer.wait()

    The pool needs ``concurrency + 2`` connections to run at full speed (one for the
    fetch loop, one for the LISTEN connection unless ``listen_connect`` or ``dsn`` opens
    it outside the pool). A handler that takes a connection runs inside the transaction
    that records its event's outcome: its writes commit if and only if the event is
    marked handled.
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
        dsn: str | None = None,
        **options: Any,
    ) -> None:
        if config is None:
            if name is None:
                raise UsageError("Consumer needs a name: Consumer(pool, name='coaching')")
            config = ConsumerConfig(name=name, **options)
        elif name is not None or options:
            raise UsageError("pass either config=ConsumerConfig(...) or name and options")
        if listen_connect is not None and dsn is not None:
            raise UsageError("pass listen_connect or dsn, not both")
        self.config = config
        self.name = config.name
        self.pool = pool
        self.registry = registry if registry is not None else Registry.load()
        self.telemetry = telemetry if telemetry is not None else Telemetry.default()
        self.stats = ConsumerStats()
        self.listener: Listener | None = None
        self._listen_connect = listen_connect
        self._dsn = dsn
        self._subscriptions: dict[str, Subscription] = {}
        self._state = ConsumerState.NEW
        self._failure: BaseException | None = None
        self._log = {"consumer": self.name}

    # -- registration --------------------------------------------------------------

    def on(
        self,
        event_type: str,
        *,
        retry_delays: Iterable[float] | None = None,
        timeout: float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register ``async def handler(event)`` or ``async def handler(event, conn)``.

        ``retry_delays`` and ``timeout`` override the consumer's for this handler. A
        handler may raise :class:`~dispatch_aio.Reject` (dead-letter now) or
        :class:`~dispatch_aio.RetryAfter` (retry no sooner than a delay).
        """
        if self._state is not ConsumerState.NEW:
            raise LifecycleError("handlers can only be added before the consumer starts")
        if callable(event_type):  # @consumer.on written without its event type
            raise UsageError(
                '@consumer.on needs the event type: write @consumer.on("order.placed")'
            )
        self.registry.current_version(event_type)  # UnknownEventTypeError when unknown
        if event_type in self._subscriptions:
            raise UsageError(f"consumer {self.name!r} already has a handler for {event_type!r}")
        opts = HandlerOptions(
            retry_delays=retry_delays,  # any iterable; a bad value is InvalidSettingError
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
            self._subscriptions[event_type] = Subscription(
                event_type=event_type,
                handler=handler,
                wants_conn=len(positional) == 2,
                retry_delays=opts.retry_delays
                if opts.retry_delays is not None
                else self.config.retry_delays,
                timeout=opts.timeout if opts.timeout is not None else self.config.handler_timeout,
                payload_model=payload_model_of(handler),
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
        scheduler = self._scheduler
        owner = self._leases.member_id
        untrack_backlog = self.telemetry.track_backlog(
            self.name,
            self.event_types,
            lambda: [i.event_type for i in list(scheduler.inflight.values())],
            owner=owner,
        )
        members = self._members
        untrack_partitions = self.telemetry.track_partitions(
            self.name, owner, lambda: len(members.owned)
        )

        def untrack() -> None:
            untrack_backlog()
            untrack_partitions()

        self._untrack_backlog = untrack
        self._runner = asyncio.create_task(self._run(), name=f"dispatch-aio consumer {self.name}")
        started = asyncio.ensure_future(self._started.wait())
        try:
            done, _ = await asyncio.wait(
                {started, self._runner}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            started.cancel()
        if self._runner in done:
            self._raise_failure()

    def stop(self) -> None:
        """Ask the consumer to drain and stop; returns at once (``wait()`` for the end)."""
        if self._state is ConsumerState.RUNNING:
            self._state = ConsumerState.DRAINING
            self._stop_requested.set()
            self._reader.wake.set()
            self._reader.capacity.set()
            self._crew.work.ring_all()

    def abort(self) -> None:
        """Stop now: cancel handlers in flight (their transactions roll back)."""
        self.stop()
        self._abort_requested.set()

    async def wait(self) -> None:
        """Wait until the consumer has stopped.

        Raises :class:`~dispatch_aio.ConsumerFailedError` (the bug as its cause) when a bug
        stopped it. Cancelling the wait does not stop the consumer.
        """
        if self._state is ConsumerState.NEW:
            raise LifecycleError("the consumer has not started")
        try:
            await asyncio.shield(self._runner)
        except BaseException:
            if not self._runner.done():
                raise  # our caller was cancelled
        self._raise_failure()

    def _raise_failure(self) -> None:
        runner = self._runner
        if runner.done() and not runner.cancelled():
            exc = runner.exception()
            if exc is not None:
                raise exc

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

        def drain() -> None:
            logger.info("signal received: draining", extra=self._log)
            self.stop()

        def abort() -> None:
            logger.warning("second signal: aborting", extra=self._log)
            self.abort()

        with drain_on_signals(drain, abort):
            async with self:
                await self.wait()

    # -- start-up ------------------------------------------------------------------

    async def _prepare(self) -> None:
        config = self.config
        self._started = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._abort_requested = asyncio.Event()
        self._wakeups = Wakeups(
            name=self.name,
            config=config,
            pool=self.pool,
            subscriptions=self._subscriptions,
            listen_connect=self._listen_connect,
            dsn=self._dsn,
            log_extra=self._log,
        )
        parts = await prepare(
            name=self.name,
            config=config,
            pool=self.pool,
            registry=self.registry,
            telemetry=self.telemetry,
            stats=self.stats,
            subscriptions=self._subscriptions,
            dsn=self._dsn,
            listens_on_pool=self._wakeups.on_pool(),
            stop_requested=self._stop_requested,
            listening=self._listening,
            on_dedup_hit=self._dedup_hit,
            log_extra=self._log,
        )
        self._leases = parts.leases
        self._member_connection = parts.member_connection
        self._members = parts.members
        self._workers = parts.workers
        self._scheduler = parts.scheduler
        self._fetcher = parts.fetcher
        self._reader = parts.reader
        self._handover = parts.handover
        self._crew = parts.crew

    def _dedup_hit(self, event_type: str) -> None:
        self.stats.dedup_hits += 1
        self.telemetry.dedup_hit(event_type, self.name)

    async def _run(self) -> None:
        config = self.config
        try:
            async with anyio.create_task_group() as tg:
                if config.listen:
                    self.listener = self._wakeups.listener(self._reader, self._members)
                    await tg.start(self.listener.run)
                tg.start_soon(self._crew.retry_clock)
                # Before any event is read: readied alongside the workers, the connections
                # held the pool while the first events' groups waited for one (up to a
                # second in a steady trickle just after start).
                await self._crew.warm()
                # Join the group, and take this process's share, before the first read;
                # only now, with LISTEN up and the read loop next: the others hand a
                # newcomer its share as soon as it joins, and it must be there to take it.
                async with self.pool.acquire(timeout=config.acquire_timeout) as conn:
                    await self._members.join(conn)
                await self._supervise()
                tg.cancel_scope.cancel()
        except BaseException as exc:
            if isinstance(exc, Exception):
                self._state = ConsumerState.FAILED
                bug = _first_bug(exc)
                logger.error("consumer failed: %s: %s", type(bug).__name__, bug, extra=self._log)
                raise ConsumerFailedError(
                    f"consumer {self.name!r} stopped on a bug: {type(bug).__name__}: {bug}. "
                    "Events in flight run again after a restart; please report it"
                ) from bug
            raise
        finally:
            if self._state is not ConsumerState.FAILED:
                self._state = ConsumerState.CLOSED
            self._untrack_backlog()
            logger.info("consumer stopped", extra=self._log)

    async def _supervise(self) -> None:
        """Run fetch loop and workers; on stop, drain then cancel what is left."""
        async with anyio.create_task_group() as workers:
            workers.start_soon(self._reader.run)
            workers.start_soon(self._members.run, self._stop_requested)
            for _ in range(self._workers):
                workers.start_soon(self._crew.worker)
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
            try:
                await self._reader.flush_cursors()
                # Drained: hand every lease back at once (the others need not wait for
                # them to expire).
                async with self.pool.acquire(timeout=self.config.acquire_timeout) as conn:
                    await self._members.leave(conn)
                await self._member_connection.aclose()
            except Exception as exc:
                if classify(exc, handler=False) is not FailureKind.INFRASTRUCTURE:
                    raise
                # A low-water mark: losing this store costs a re-read, never an event;
                # leases not handed back expire after lease_timeout.

    async def _wait_groups_idle(self, scope: anyio.CancelScope) -> None:
        await self._crew.groups_idle.wait()
        scope.cancel()

    def _listening(self) -> bool:
        return self.listener is not None and self.listener.connected

    # -- observation ---------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until a read begun after this call found nothing, and nothing is in flight.

        Events committed before the call are handled (or dead-lettered) when it returns.
        Cancelling it leaves nothing behind.
        """
        if self._state is ConsumerState.NEW:
            raise LifecycleError("the consumer has not started")
        reader = self._reader
        started = reader.fetch_seq
        reader.replays_due = True  # a replay may have been asked for just before
        reader.idle_waiters += 1
        try:
            while True:
                reader.wake.set()
                waiter = asyncio.ensure_future(reader.idle.wait())
                try:
                    done, _ = await asyncio.wait(
                        {waiter, self._runner}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()
                if self._runner in done:
                    self._raise_failure()
                    raise LifecycleError("the consumer stopped before it was idle")
                if self._handover.idle_counts(reader.idle_seq, started):
                    return
                reader.idle.clear()
        finally:
            reader.idle_waiters -= 1

    def backlog(self) -> int:
        """Events read but not yet given an outcome (in this process)."""
        return len(self._scheduler.inflight)

    def buffered(self) -> int:
        """Events held in memory (at most about ``max_buffered`` per type, plus a batch)."""
        return self._scheduler.buffered()


def _first_bug(exc: BaseException) -> BaseException:
    """The first exception of a (nested) exception group, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
