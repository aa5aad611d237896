"""The workers: take groups from the scheduler, run them on a pool connection, give the
connection back when idle; and the retry clock that unparks subjects when due.

At start the workers' connections are opened and readied (:meth:`Workers.warm`), so
that the first burst of work does not pay for them inside its groups. A worker keeps its
connection while work keeps coming (one second idle gives it back).
A group whose connection failed (infrastructure) was put back by the runner; the worker
then gives the connection up and waits a capped exponential backoff with jitter before
its next group, so that a restarting server is not hammered.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg

from .._storage import Backoff, FailureKind, classify, release
from ._config import ConsumerConfig
from ._items import Item
from ._outcomes import ConsumerStats
from ._reader import ReadLoop
from ._runner import GroupRunner
from ._scheduler import Scheduler

__all__ = ["WorkBell", "Workers"]

logger = logging.getLogger("dispatch_aio.consumer")

_IDLE_RELEASE = 1.0  # seconds a worker keeps its connection with nothing to do
_WARM_WAIT = 1.0  # seconds the start-up waits for each connection it readies


class WorkBell:
    """Wakes idle workers when subjects become ready: at most one pending wake per worker.

    The scheduler rings once per subject that becomes ready, thousands of times for one
    read of a backlog, while one worker's group takes many subjects at once. Wakes beyond
    one per worker would only make workers look at an empty ready queue; instead a worker
    that leaves subjects ready after taking its group rings for the next one.
    """

    __slots__ = ("_limit", "_pending", "_semaphore")

    def __init__(self, workers: int) -> None:
        self._semaphore = asyncio.Semaphore(0)
        self._limit = max(1, workers)
        self._pending = 0

    def ring(self) -> None:
        """Subjects are ready: wake a worker, unless every worker has a wake pending."""
        if self._pending < self._limit:
            self._pending += 1
            self._semaphore.release()

    def ring_all(self) -> None:
        """Wake every worker (the consumer stops)."""
        for _ in range(self._limit):
            self._pending += 1
            self._semaphore.release()

    def idle(self) -> bool:
        """No wake pending: a worker waiting now suspends."""
        return self._pending == 0

    async def wait(self) -> None:
        """Wait for a wake; cancellable (no wake is used up then)."""
        await self._semaphore.acquire()
        self._pending -= 1


class Workers:
    """The worker tasks' loop and the retry clock of one consumer."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        config: ConsumerConfig,
        scheduler: Scheduler,
        runner: GroupRunner,
        reader: ReadLoop,
        stats: ConsumerStats,
        stop_requested: asyncio.Event,
        work: WorkBell,
        retry_wake: asyncio.Event,
        log_extra: dict[str, Any],
        prepare: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
        workers: int = 1,
    ) -> None:
        self.pool = pool
        self._prepare = prepare
        self._workers = workers
        self.config = config
        self._scheduler = scheduler
        self._runner = runner
        self._reader = reader
        self._stats = stats
        self._stop_requested = stop_requested
        #: Rung when subjects become ready (and for every worker at stop).
        self.work = work
        self._retry_wake = retry_wake
        self._log = log_extra
        self._backoff = Backoff(0.1, 5.0)
        self._groups_running = 0
        #: Set while no group runs (the drain waits for it).
        self.groups_idle = asyncio.Event()
        self.groups_idle.set()

    async def worker(self) -> None:
        """Run groups until stopped; never raises for the database, only for a bug."""
        scheduler = self._scheduler
        work = self.work
        config = self.config
        conn: asyncpg.Connection | None = None
        try:
            while True:
                if work.idle():
                    if conn is None:
                        await work.wait()
                    else:
                        try:
                            # asyncio.timeout, not wait_for: no task made per idle wait.
                            async with asyncio.timeout(_IDLE_RELEASE):
                                await work.wait()
                        except TimeoutError:
                            # Idle for a while: give the connection back to the pool.
                            idle, conn = conn, None
                            await release(self.pool, idle, config.commit_timeout)
                            continue
                else:
                    await work.wait()  # a wake is pending: no suspension
                if self._stop_requested.is_set():
                    return
                posted: list[str] = []  # the group's mailbox (Scheduler.take_more)
                group = scheduler.take_subject(posted)
                if not group:
                    continue
                if scheduler.ready:
                    work.ring()  # more is ready than this group took: the next worker
                self._groups_running += 1
                self.groups_idle.clear()
                failed = False
                try:
                    if conn is None:
                        conn = await self._acquire_for(group)
                    if conn is not None:
                        if not await self._runner.run(group, conn, posted):
                            broken, conn = conn, None
                            failed = True
                            await release(self.pool, broken, config.commit_timeout)
                        else:
                            self._backoff.reset()
                    else:
                        failed = True
                finally:
                    self._groups_running -= 1
                    self._after_group(group)
                    if self._groups_running == 0:
                        self.groups_idle.set()
                if failed:
                    await anyio.sleep(self._backoff.next())
        finally:
            await release(self.pool, conn, config.commit_timeout)

    async def warm(self) -> None:
        """Open and ready a connection per worker (and the read loop's) before work
        arrives; best effort.

        Opened lazily, each would be made inside the first group that needs it: in a
        burst, every worker connects at once (a server process each, plus the driver's
        look-up of the array types the outcome statement uses) while its events wait.
        One task per connection takes it, readies it and gives it back at once: none
        holds one while waiting for another. The consumer awaits this before its first
        read, so no event waits behind it. A pool that cannot give one within
        ``_WARM_WAIT`` (shared, or failing) is left alone: the workers connect when they
        need to. Cancellation (the consumer stops) gives back what was taken.
        """
        async with anyio.create_task_group() as tg:
            # One per worker and one for the read loop: this runs before it starts.
            for _ in range(self._workers + 1):
                tg.start_soon(self._warm_one)

    async def _warm_one(self) -> None:
        try:
            # Not the acquire timeout: a pool busy elsewhere is not waited for.
            conn: asyncpg.Connection = await self.pool.acquire(timeout=_WARM_WAIT)
        except Exception as exc:
            if classify(exc, handler=False) is not FailureKind.INFRASTRUCTURE:
                raise
            return
        try:
            if self._prepare is not None:
                await self._prepare(conn)
        except Exception as exc:
            if classify(exc, handler=False) is not FailureKind.INFRASTRUCTURE:
                raise
            logger.debug("could not ready a worker's connection: %s", exc, extra=self._log)
        finally:
            await release(self.pool, conn, self.config.commit_timeout)

    async def _acquire_for(self, group: list[Item]) -> asyncpg.Connection | None:
        """A pool connection, or None (the group requeued) when the pool cannot give one."""
        try:
            conn: asyncpg.Connection = await self.pool.acquire(timeout=self.config.acquire_timeout)
            return conn
        except Exception as exc:
            if classify(exc, handler=False) is not FailureKind.INFRASTRUCTURE:
                raise
            self._scheduler.requeue(group)
            self._stats.reconnects += 1
            logger.warning(
                "no database connection for %d events (%s: %s); they will run again",
                len(group),
                type(exc).__name__,
                exc,
                extra=self._log,
            )
            return None

    def _after_group(self, group: list[Item]) -> None:
        """Release the group's subjects and put their next events up for a worker."""
        self._scheduler.release(group)
        members = self._runner.members
        if members is not None:
            members.group_done((i.partition for i in group), len(self._scheduler.inflight))
        reader = self._reader
        if len(self._scheduler.inflight) < reader.refill_below:
            reader.capacity.set()
        # A poke, not a read: finishing a group makes no row readable; the read loop only
        # looks whether the consumer is idle now and whether cursors are due to be stored.
        reader.wake.poke()

    async def retry_clock(self) -> None:
        """Unpark subjects whose retry is due, until cancelled."""
        scheduler = self._scheduler
        while True:
            self._retry_wake.clear()
            timeout = scheduler.due()
            with anyio.move_on_after(timeout if timeout is not None else math.inf):
                await self._retry_wake.wait()
