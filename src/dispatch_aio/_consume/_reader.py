"""The read loop: when to read, on which connection, and what to do when reading fails.

It asks the fetcher (``_fetcher``) for a batch whenever it is woken (a notification,
``wait_idle``, a finished group when that can matter: :meth:`ReadLoop.group_done`) or the
poll interval has passed, stores the cursors the scheduler moved (after a read, or
between reads, at most every ``_FLUSH_EVERY``), pauses while the buffer
is full, reads pending replays when asked (or every poll interval while no LISTEN
connection is up), and reconnects with a capped exponential backoff and jitter when the
database fails. Anything else is a bug and
propagates (the consumer fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import asyncpg

from .._status import horizon_holders
from .._storage import Backoff, FailureKind, classify, is_usable, release, terminate
from .._storage._consumer_store import ConsumerStore
from ._config import ConsumerConfig
from ._fetcher import Fetcher
from ._runner import ConsumerStats
from ._scheduler import Scheduler
from .leases_store import LeaseStore

__all__ = ["ReadLoop"]

logger = logging.getLogger("dispatch_aio.consumer")

#: Seconds between two cursor writes while events keep coming. The stored cursor is a
#: low-water mark (a restart re-reads what it has not passed, and the markers skip what
#: was done): storing it once per event only adds a disk flush per event, and a read that
#: waits behind one.
_FLUSH_EVERY = 0.1


class ReadLoop:
    """Reads for one consumer until ``stop_requested`` is set."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        config: ConsumerConfig,
        store: ConsumerStore,
        fetcher: Fetcher,
        scheduler: Scheduler,
        stats: ConsumerStats,
        stop_requested: asyncio.Event,
        listening: Callable[[], bool],
        refill_below: int,
        log_extra: dict[str, Any],
        leases: LeaseStore | None = None,
    ) -> None:
        self.pool = pool
        self._leases = leases
        #: The partitions the stored cursors are written for: None, every partition (the
        #: per-type cursor); else the partitions the fetcher's stream covers.
        self.cursor_partitions: frozenset[int] | None = frozenset()
        self.config = config
        self._store = store
        self._fetcher = fetcher
        self._scheduler = scheduler
        self._stats = stats
        self._stop_requested = stop_requested
        self._listening = listening
        self.refill_below = refill_below
        self._log = log_extra
        #: Set to read again at once.
        self.wake = asyncio.Event()
        #: Set when the workers have used up enough of the buffer to read again.
        self.capacity = asyncio.Event()
        #: Set by a read that found nothing while nothing was in flight.
        self.idle = asyncio.Event()
        #: Reads begun so far, and the one that last found the consumer idle.
        self.fetch_seq = 0
        self.idle_seq = -1
        #: Read the pending replays with the next read.
        self.replays_due = True
        self._replays_read_at = 0.0
        self._cursor_held = False
        self._capped = False
        self._flushed_at = 0.0
        #: The pool connection held for reading, and the lock that lends it out between
        #: two reads (the member task heartbeats on it: no pool slot of its own).
        self._conn: asyncpg.Connection | None = None
        self._conn_lock = asyncio.Lock()

    @property
    def connection(self) -> asyncpg.Connection | None:
        """The pool connection the reads run on (None while there is none)."""
        return self._conn

    def request_replays(self) -> None:
        """Read pending replays with the next read, at once."""
        self.replays_due = True
        self.wake.set()

    async def run(self) -> None:
        """Read until stopped; holds one pool connection while it reads."""
        config = self.config
        scheduler = self._scheduler
        failures = Backoff(0.1, max(0.1, min(config.poll_interval, 5.0)))
        held_since: float | None = None
        try:
            while not self._stop_requested.is_set():
                if len(scheduler.inflight) >= self.refill_below:
                    # Enough buffered: read again once the workers have used half of it,
                    # in one large read rather than many small ones.
                    self.capacity.clear()
                    await self.capacity.wait()
                    continue
                try:
                    if self._conn is None:
                        # Outside the lock: a borrower uses a pool connection meanwhile
                        # rather than wait for this one to be made.
                        self._conn = await self.pool.acquire(timeout=config.acquire_timeout)
                    async with self._conn_lock:
                        # A read whose request or answer vanished (a partition, a dead NAT
                        # entry) would wait for TCP to give up, minutes; bound it instead.
                        with anyio.fail_after(config.commit_timeout):
                            full = await self._read(self._conn)
                            if self._flush_due():
                                # After the read, not before: a cursor write waits for its
                                # commit to reach the disk; delivery must not wait behind it.
                                await self.flush_cursors(self._conn)
                    failures.reset()
                except Exception as exc:
                    if classify(exc, handler=False) is not FailureKind.INFRASTRUCTURE:
                        raise
                    delay = failures.next()
                    self._stats.reconnects += 1
                    logger.warning(
                        "fetch failed (%s: %s); again in %.1fs",
                        type(exc).__name__,
                        exc,
                        delay,
                        extra=self._log,
                    )
                    # A read that timed out: presumed dead, its answer may never come.
                    await self._drop_connection(dead=isinstance(exc, TimeoutError))
                    await self._sleep_or_wake(delay)
                    continue
                if full:
                    continue
                if self._cursor_held:
                    # Open transactions keep the stored cursor (not delivery) back: their
                    # events are read when they end (a notification, or the next poll).
                    now = time.monotonic()
                    if held_since is None:
                        held_since = now
                    elif now - held_since >= config.horizon_warning_after:
                        held_since = now  # warn again after another interval
                        async with self._conn_lock:
                            await self._warn_horizon(self._conn)
                else:
                    held_since = None
                if scheduler.idle:
                    self.idle_seq = self.fetch_seq
                    self.idle.set()
                await self._wait(config.poll_interval)
        finally:
            with anyio.CancelScope(shield=True):
                await self._drop_connection()

    async def _drop_connection(self, *, dead: bool = False) -> None:
        """Give the read connection back (broken, or the loop ends); never while lent out."""
        async with self._conn_lock:
            conn, self._conn = self._conn, None
            if dead:
                terminate(conn)
            await release(self.pool, conn, self.config.commit_timeout)

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[asyncpg.Connection]:
        """The read connection between two reads; a pool connection while there is none.

        For the member task's few statements per heartbeat: it never waits for a pool
        slot while the workers hold the rest, only for the read in progress. A failure
        on it is the read loop's to see (its next read reconnects).
        """
        async with self._conn_lock:
            conn = self._conn
            # is_usable, not is_closed(): a pool proxy whose connection the server ended
            # is detached by the pool, and is_closed() on it raises.
            if conn is not None and is_usable(conn):
                try:
                    yield conn
                except TimeoutError:
                    terminate(conn)  # its answer may never come: the next read reconnects
                    raise
                return
            async with self.pool.acquire(timeout=self.config.acquire_timeout) as own:
                yield own

    async def _warn_horizon(self, conn: asyncpg.Connection | None) -> None:
        """Log the open transactions that have kept committed events from this consumer."""
        if conn is None:
            return
        try:
            holders = await horizon_holders(conn, schema=self.config.db_schema)
        except Exception as exc:
            if classify(exc, handler=False) is not FailureKind.INFRASTRUCTURE:
                raise
            return
        for holder in holders[:5]:
            who = f"pid {holder.pid}" if holder.pid is not None else f"prepared {holder.gid!r}"
            logger.warning(
                "the stored cursor must wait behind transaction %s (%s, database %s, open %.0fs);"
                " a restart re-reads what was handled since",
                holder.xid,
                who,
                holder.database,
                holder.age_seconds,
                extra={**self._log, "pid": holder.pid, "age_seconds": holder.age_seconds},
            )

    def _flush_due(self) -> bool:
        """Whether moved cursors should be stored now: at most every ``_FLUSH_EVERY``."""
        if not self._scheduler.moved_cursors():
            return False
        return time.monotonic() - self._flushed_at >= _FLUSH_EVERY

    def group_done(self) -> None:
        """A group ended: read at once only where that read can find something new.

        With notifications up, new events announce themselves; reading after every
        group would only repeat an empty read (a round trip and a query per group, in
        every process of a group of them). A group's end matters to the reader when
        nothing is left in flight (a read then finds the consumer idle, which
        ``wait_idle`` waits for), when the last read stopped at the buffer cap (the
        group may have made room), or when there are no notifications to wait for.
        """
        if self._capped or self._scheduler.idle or not self._listening():
            self.wake.set()

    async def _wait(self, poll_interval: float) -> None:
        """Until woken, or ``poll_interval`` passed; stores moved cursors meanwhile.

        A cursor that moved is stored ``_FLUSH_EVERY`` after the last store, without a
        read: only a wake-up or the poll interval reads again.
        """
        deadline = time.monotonic() + poll_interval
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return
            if not self._scheduler.moved_cursors():
                await self._sleep_or_wake(left)
                return
            due = max(self._flushed_at + _FLUSH_EVERY - now, 0.0)
            if due >= left:
                await self._sleep_or_wake(left)
                return
            if await self._sleep_or_wake(due) or not await self._flush_between_reads():
                return

    async def _flush_between_reads(self) -> bool:
        """Store moved cursors on the read connection; False when that failed (the next
        read reconnects, and stores them)."""
        config = self.config
        try:
            if self._conn is None:
                return False
            async with self._conn_lock:
                if self._conn is None:
                    return False
                with anyio.fail_after(config.commit_timeout):
                    await self.flush_cursors(self._conn)
        except Exception as exc:
            if classify(exc, handler=False) is not FailureKind.INFRASTRUCTURE:
                raise
            if isinstance(exc, TimeoutError):
                await self._drop_connection(dead=True)  # its answer may never come
            return False
        return True

    async def _sleep_or_wake(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a wake-up; True when woken."""
        with anyio.move_on_after(seconds):
            await self.wake.wait()
        woken = self.wake.is_set()
        self.wake.clear()
        return woken

    async def _read(self, conn: asyncpg.Connection) -> bool:
        """One read; returns True when the batch was full (more is probably waiting)."""
        self.idle.clear()
        self.wake.clear()
        self.fetch_seq += 1
        # The fetcher skips the read at the cap; a group that makes room must wake it.
        self._capped = self._scheduler.at_cap()
        result = await self._fetcher.read(conn)
        self._stats.fetches += 1
        self._cursor_held = result.cursor_held
        now = time.monotonic()
        if not self._listening() and now - self._replays_read_at >= self.config.poll_interval:
            # Without notifications a replay request is only seen by looking (poll-only
            # mode, PgBouncer, or while the listener reconnects).
            self.replays_due = True
        if self.replays_due:
            self._replays_read_at = now
            self.replays_due = False
            try:
                await self._fetcher.read_replays(conn)
            except BaseException:
                self.replays_due = True
                raise
        return result.full

    async def flush_cursors(self, conn: asyncpg.Connection | None = None) -> None:
        """Store cursors that moved. A low-water mark: losing one only costs a re-read."""
        moved = self._scheduler.moved_cursors()
        if not moved:
            return
        if conn is None:
            async with self.pool.acquire(timeout=self.config.acquire_timeout) as own:
                await self._store_cursors(own, moved)
        else:
            await self._store_cursors(conn, moved)
        self._scheduler.flushed(moved)
        self._flushed_at = time.monotonic()

    async def _store_cursors(
        self, conn: asyncpg.Connection, moved: dict[str, tuple[int, int]]
    ) -> None:
        parts = self.cursor_partitions
        if parts is None or self._leases is None:
            await self._store.advance_cursors(conn, moved)
        elif parts:
            # Per partition (ADR 0006): the stream's mark holds for each it covers.
            await self._leases.advance_cursors(
                conn, {(t, p): value for t, value in moved.items() for p in parts}
            )
            await self._leases.advance_floor(conn, list(moved))
