"""The read loop: when to read, on which connection, and what to do when reading fails.

It asks the fetcher (``_fetcher``) for a batch whenever it is woken (a notification,
``wait_idle``, partitions changing hands) or the poll interval has passed, stores the
cursors the scheduler moved (after the read, at most every ``_FLUSH_EVERY``, or
``_PARTITION_FLUSH_EVERY`` for a row per partition), pauses while
the buffer is full, reads pending replays when asked (or every poll interval while no
LISTEN connection is up), and reconnects with a capped exponential backoff and jitter when
the database fails. Anything else is a bug and propagates (the consumer fails).

A finished group only *pokes* it: no row became readable by that, so it does not read
(unless the buffer cap held the last read back, there is no LISTEN to announce new events,
or a ``wait_idle`` waits and nothing is left in flight: idle is only found by a read); it
stores moved cursors when due. In a steady trickle that halves the reads: one per
notification, not one more per finished group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import asyncpg

from .._status import horizon_holders
from .._storage import Backoff, FailureKind, classify, is_usable, release, terminate
from .._storage._consumer_store import ConsumerStore
from ._config import ConsumerConfig
from ._fetcher import Fetcher
from ._outcomes import ConsumerStats
from ._scheduler import Scheduler
from .leases_store import LeaseStore

__all__ = ["ReadLoop"]

logger = logging.getLogger("dispatch_aio.consumer")

#: Seconds between two cursor writes while events keep coming. The stored cursor is a
#: low-water mark (a restart re-reads what it has not passed, and the markers skip what
#: was done): storing it once per event only adds a disk flush per event, and a read that
#: waits behind one.
_FLUSH_EVERY = 0.1
#: The same for a process holding part of its group's partitions (ADR 0006). Its cursor
#: is stored as one row per partition it holds: every 0.1 s, 2 processes of 128 partitions
#: each spent about 3% of the 2-core machine's CPU (server and client) writing 2,560 rows
#: a second. At this interval a group writes 256 rows a second whatever its size. A crash
#: re-reads up to this much more (skipped by the markers); a hand-over and a stop store
#: the cursors at once, as before.
_PARTITION_FLUSH_EVERY = 1.0


class ReadWake:
    """The read loop's wake-up: :meth:`set` asks for a read, :meth:`poke` only for a look."""

    __slots__ = ("_event", "read")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        #: A read was asked for since the last one began.
        self.read = True

    def set(self) -> None:
        """Read again at once."""
        self.read = True
        self._event.set()

    def poke(self) -> None:
        """Look again (idle? cursors to store?) without reading."""
        self._event.set()

    def is_set(self) -> bool:
        """Set or poked since the last :meth:`clear`."""
        return self._event.is_set()

    def clear(self) -> None:
        """Forget pokes; a read asked for stays asked for until one begins."""
        self._event.clear()

    async def wait(self) -> None:
        """Until set or poked."""
        await self._event.wait()


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
        on_read: Callable[[], None] | None = None,
        on_reconnect: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    ) -> None:
        self.pool = pool
        #: Called on the new read connection after one was lost, before it reads or
        #: stores anything (the streams are read again from the stored cursors).
        self._on_reconnect = on_reconnect
        #: The read connection was lost: what the streams know may be from before a server
        #: restart, which hands out transaction ids again. No cursor is stored until
        #: ``on_reconnect`` has run.
        self._reread = False
        #: Called after every read (the member task looks whether the backlog moved).
        self._on_read = on_read
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
        #: Set to read again at once; poked when a group finished.
        self.wake = ReadWake()
        #: Set when the workers have used up enough of the buffer to read again.
        self.capacity = asyncio.Event()
        #: Set by a read that found nothing while nothing was in flight.
        self.idle = asyncio.Event()
        #: Reads begun so far, and the one that last found the consumer idle.
        self.fetch_seq = 0
        self.idle_seq = -1
        #: wait_idle calls waiting now: a poke that finds nothing in flight then reads.
        self.idle_waiters = 0
        #: Read the pending replays with the next read.
        self.replays_due = True
        self._replays_read_at = 0.0
        self._cursor_held = False
        self._flushed_at = 0.0
        #: When the last read began, and whether the buffer cap held it back.
        self._read_at = 0.0
        self._capped = False
        #: Nothing was in flight when the last read began (so no cap held it back).
        self._began_idle = False
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
                    self.wake.set()
                    continue
                # Idle is only ever found by a read: when someone waits for it and nothing
                # is in flight, a poke reads (otherwise it does not).
                read = self._read_due() or (self.idle_waiters > 0 and scheduler.idle)
                full = False
                if read or self._flush_due():
                    try:
                        if self._conn is not None and not is_usable(self._conn):
                            await self._lost_connection()
                        if self._conn is None:
                            # Outside the lock: a borrower uses a pool connection meanwhile
                            # rather than wait for this one to be made.
                            self._conn = await self.pool.acquire(timeout=config.acquire_timeout)
                        async with self._conn_lock:
                            # A read whose request or answer vanished (a partition, a dead
                            # NAT entry) would wait for TCP to give up, minutes; bound it.
                            with anyio.fail_after(config.commit_timeout):
                                if self._reread:
                                    await self._reconnected(self._conn)
                                    read = True
                                if read:
                                    full = await self._read(self._conn)
                                if self._flush_due():
                                    # After the read, not before: delivery must not wait
                                    # behind a cursor write.
                                    await self.flush_cursors(self._conn)
                        failures.reset()
                    except Exception as exc:
                        if classify(exc, handler=False) is not FailureKind.INFRASTRUCTURE:
                            raise
                        delay = failures.next()
                        self._stats.reconnects += 1
                        self._reread = True
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
                        self.wake.set()  # read again after the pause, whatever woke it
                        continue
                if full:
                    self.wake.read = True  # more is probably waiting: read on at once
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
                if read and self._began_idle and scheduler.idle:
                    # A read that found nothing new while nothing was in flight, from its
                    # start: one begun behind an event still running may have been held
                    # back by the buffer cap, and that event may have finished meanwhile.
                    self.idle_seq = self.fetch_seq
                    self.idle.set()
                await self._sleep_or_wake(self._sleep_for(config.poll_interval))
        finally:
            with anyio.CancelScope(shield=True):
                await self._drop_connection()

    async def _reconnected(self, conn: asyncpg.Connection) -> None:
        """The read connection was lost and is back: read again from the stored cursors."""
        if self._on_reconnect is not None:
            await self._on_reconnect(conn)
        self._reread = False

    def cursors_trusted(self) -> bool:
        """Whether the cursors the scheduler moved may be stored.

        Not from the moment the read connection is found lost until the streams are read
        again from the stored cursors: a server crash may have handed out again ids they
        passed as over, and a cursor stored past such an id would lose its events for
        good. A crash ends every connection, the read one with the others, so a lost read
        connection is the sign (a connection cut alone costs a re-read, skipped by the
        markers).
        """
        conn = self._conn
        if conn is not None and not is_usable(conn):
            self._reread = True
        return not self._reread

    async def _lost_connection(self) -> None:
        """The read connection ended between two reads (the server ended it, or crashed):
        give it back and read again from the stored cursors on the next one, without a
        read that fails on it first."""
        self._reread = True
        self._stats.reconnects += 1
        logger.info("the read connection was lost; reconnecting", extra=self._log)
        await self._drop_connection()

    def _read_due(self) -> bool:
        """Whether to read now: asked to, the poll interval passed, the cap held the last
        read back, or nothing announces new events (no LISTEN: a finished group is then
        the moment to look for them)."""
        if self.wake.read or self._capped or not self._listening():
            return True
        return time.monotonic() - self._read_at >= self.config.poll_interval

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

    def _flush_every(self) -> float:
        """Seconds between two cursor writes: one row, or a row per partition held."""
        if self.cursor_partitions is None or self._leases is None:
            return _FLUSH_EVERY
        return _PARTITION_FLUSH_EVERY

    def _flush_due(self) -> bool:
        """Whether moved cursors should be stored now: at most every :meth:`_flush_every`."""
        if not self._scheduler.marks.moved():
            return False
        return time.monotonic() - self._flushed_at >= self._flush_every()

    def _sleep_for(self, poll_interval: float) -> float:
        """How long to wait for a wake-up: until the next poll, or less to store a cursor."""
        now = time.monotonic()
        poll = max(self._read_at + poll_interval - now, 0.0)
        if not self._scheduler.marks.moved():
            return poll
        return min(poll, max(self._flushed_at + self._flush_every() - now, 0.0))

    async def _sleep_or_wake(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self.wake.wait()
        self.wake.clear()

    async def _read(self, conn: asyncpg.Connection) -> bool:
        """One read; returns True when the batch was full (more is probably waiting)."""
        self.idle.clear()
        self.wake.clear()
        self.wake.read = False
        self.fetch_seq += 1
        self._read_at = time.monotonic()
        self._began_idle = self._scheduler.idle
        result = await self._fetcher.read(conn)
        if self._on_read is not None:
            self._on_read()
        self._capped = self._scheduler.marks.at_cap()
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
        moved = self._scheduler.marks.moved()
        if not moved or not self.cursors_trusted():
            return
        if conn is None:
            async with self.pool.acquire(timeout=self.config.acquire_timeout) as own:
                await self._store_cursors(own, moved)
        else:
            await self._store_cursors(conn, moved)
        self._scheduler.marks.flushed(moved)
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
