"""The member task: this process's place in its consumer's group (ADR 0006, part B).

Joins, heartbeats every ``lease_heartbeat`` seconds (``lease_timeout / 3`` by default),
reads the group (``LeaseStore.view``), asks :func:`.membership.plan` what to do and does
it: drops what it lost, stops reading what it hands over and releases it once its
in-flight events have outcomes, acquires what is free and targeted here. A notice on
the lease channel (a member joined, left or released) makes it look again at once. On
stop, after the consumer drained, it releases every lease and leaves.

In a group of more than one, each step also reports how many events are queued in each
partition held here, and the plan evens those backlogs out (ADR 0006, part E): this
process gives partitions with a backlog and nothing running to a member with less. A
backlog grown by a quarter or more since the last report makes it step at once and tell
the others.

What it owns is read by the fetcher (:meth:`Members.readable`) and by the group runner
(:meth:`Members.epochs`: the fencing tokens of a group's partitions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import asyncpg

from .._storage import FailureKind, classify, terminate
from .assignment import PARTITION_COUNT
from .leases_store import LeaseStore
from .membership import Plan, plan

__all__ = ["MemberConnection", "Members"]

logger = logging.getLogger("dispatch_aio.consumer")


class Members:
    """This process's leases, and the loop that keeps them."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        heartbeat: float,
        step_limit: float,
        connection: Callable[[], contextlib.AbstractAsyncContextManager[asyncpg.Connection]],
        busy: Callable[[], set[int]],
        backlog: Callable[[], dict[int, int]],
        running: Callable[[], set[int]],
        on_change: Callable[[asyncpg.Connection, set[int]], Awaitable[None]],
        on_lost: Callable[[set[int]], None],
        log_extra: dict[str, Any],
        unread: Callable[[asyncpg.Connection], Awaitable[dict[int, int]]] | None = None,
    ) -> None:
        self.store = store
        self.heartbeat = heartbeat
        self.step_limit = step_limit
        self._connection = connection
        self._busy = busy
        self._backlog = backlog
        self._unread = unread
        self._running = running
        self._on_change = on_change
        self._on_lost = on_lost
        self._log = log_extra
        #: partition -> epoch held here.
        self.owned: dict[int, int] = {}
        #: Held, but targeted at another member: not read any more, released once idle.
        self.handing_over: set[int] = set()
        #: A step is taking partitions on (acquired or adopted, their stream not started).
        self.settling = False
        #: Held, but their stream failed to start (the step failed): not read until a
        #: later step starts it from their cursors.
        self.unstarted: set[int] = set()
        self.wake = asyncio.Event()
        #: The last view showed other live members: backlogs are reported and balanced.
        self.grouped = False
        #: What was last reported (partition -> queued), and its total.
        self._reported: dict[int, int] = {}
        self._reported_total = 0
        #: The last report counted rows not read yet.
        self._reported_unread = False

    # -- what the fetcher and the runner ask ---------------------------------------

    def readable(self) -> frozenset[int] | None:
        """Partitions to read; None when this process reads them all (no filter)."""
        parts = set(self.owned) - self.handing_over - self.unstarted
        if len(parts) == PARTITION_COUNT:
            return None
        return frozenset(parts)

    def owns_all(self) -> bool:
        """Every partition is held here (the per-type cursor can be written)."""
        return len(self.owned) == PARTITION_COUNT

    def epochs(self, partitions: Iterable[int]) -> dict[int, int]:
        """Fencing tokens of ``partitions`` (-1 for one not held: the fence refuses it)."""
        return {p: self.owned.get(p, -1) for p in partitions}

    def note_backlog(self, total: int, unread: bool = False) -> None:
        """Events in flight here are now ``total``, and ``unread`` says whether rows are
        left to read beyond them: step (and report) at once when that grew by a quarter
        or more since the last report, or when rows are left to read and the last report
        counted none, in a group of more than one. (A shrinking backlog is reported with
        the next heartbeat.)"""
        if not self.grouped:
            return
        if self._grew(total) or (unread and not self._reported_unread):
            self.wake.set()

    def group_done(self, partitions: Iterable[int], total: int) -> None:
        """A group ended: step at once if it held a partition waiting to be handed over
        (it may be released now); otherwise as :meth:`note_backlog`."""
        handing = self.handing_over
        if handing and not handing.isdisjoint(partitions):
            self.wake.set()
        else:
            self.note_backlog(total)

    def on_notify(self, payload: str) -> None:
        """A lease-channel notice: look at the group again now."""
        if payload == self.store.consumer:
            self.wake.set()

    # -- the loop ------------------------------------------------------------------

    async def join(self, conn: asyncpg.Connection) -> None:
        """Join and take what is free and targeted here (before the first read)."""
        await self.store.join(conn)
        await self.step(conn)

    async def step(self, conn: asyncpg.Connection) -> float:
        """Heartbeat, read the group, carry out the plan; seconds until the next step."""
        store = self.store
        if await store.heartbeat(conn) is None:
            # Our row expired and was removed: every lease is lost; join again.
            lost = set(self.owned)
            if lost:
                logger.warning(
                    "this process was expired from its group: partitions %s lost",
                    _ranges(lost),
                    extra=self._log,
                )
            self._lose(lost)
            self.handing_over.clear()
            await store.join(conn)
        if self.grouped:
            await self._report(conn)
        view = await store.view(conn)
        member = store.member_id
        live = set(view.live_members())
        self.grouped = len(live - {member}) > 0
        # Liveness is the heartbeat alone: a process that died is taken over when its
        # row expires. Probing (host, pid) would take a live process's partitions where
        # hosts share a name and pids repeat (containers).
        epochs = {lease.partition: lease.epoch for lease in view.leases}
        steps = plan(
            member,
            live,
            view.owners(),
            epochs,
            dict(self.owned),
            self._busy() & set(self.owned),
            now=view.now,
            next_expiry=view.next_expiry(member),
            heartbeat=self.heartbeat,
            backlog=view.backlog() if self.grouped else None,
            offers=view.offers(),
            last_report=view.last_report(),
            running=self._running() if self.grouped else frozenset(),
        )
        self._lose(set(steps.lost))
        # From before an acquisition commits until the stream covers what it gained,
        # reads cover less than this process holds: none of them may find it idle.
        self.settling = bool(
            steps.adopt
            or steps.acquire
            or self.unstarted
            or self.handing_over - set(steps.hand_over) - {p for p, _ in steps.offer}
        )
        try:
            short = await self._carry_out(conn, steps, epochs)
        finally:
            self.settling = False
        if short:
            # Others took some of what the plan gave this process, since the view it was
            # made from: the plan is out of date, and what it left free stays unowned
            # until a step looks again. Soon, not a heartbeat later.
            return min(steps.next_check, self.heartbeat / _SHORT_STEPS)
        return steps.next_check

    def _grew(self, total: int) -> bool:
        """``total`` is a quarter (and ``_REPORT_STEP`` events) or more above the last
        report: worth a report now, and a notice to the others."""
        return total - self._reported_total >= max(_REPORT_STEP, self._reported_total // 4)

    async def _report(self, conn: asyncpg.Connection) -> None:
        """Store the backlog of each partition held here where it changed (events read
        without an outcome, and rows not read yet); tell the others when the total grew
        by a quarter or more."""
        counts = self._backlog()
        unread = {} if self._unread is None else await self._unread(conn)
        for partition, n in unread.items():
            counts[partition] = counts.get(partition, 0) + n
        self._reported_unread = bool(unread)
        current = {p: counts.get(p, 0) for p in self.owned}
        changed = {p: n for p, n in current.items() if self._reported.get(p) != n}
        total = sum(current.values())
        if changed:
            await self.store.report_backlog(conn, changed, notify=self._grew(total))
        self._reported = current
        self._reported_total = total

    async def _carry_out(
        self, conn: asyncpg.Connection, steps: Plan, epochs: dict[int, int]
    ) -> bool:
        """Do what ``steps`` says; True when another member took some of what it was to
        acquire first."""
        store = self.store
        # Held since a step that failed before their stream started: start it now.
        gained: set[int] = self.unstarted & set(self.owned)
        for p in steps.adopt:
            self.owned[p] = epochs[p]
            gained.add(p)
        offered = {p for p, _ in steps.offer}
        handing = (set(steps.hand_over) | offered) - self.handing_over
        # No longer to be handed over (its target left, or the target changed): read
        # again, from its stored cursor (its queued events were dropped). Until that
        # stream starts it is neither read nor given a stored cursor: the changes below
        # must not make it readable on the old stream, which passed it meanwhile.
        kept = {p for p in self.handing_over - set(steps.hand_over) - offered if p in self.owned}
        self.unstarted |= kept
        gained |= kept
        self.handing_over = (set(steps.hand_over) | offered) & set(self.owned)
        if handing:
            # Stop reading what goes to others (their cursors stored first), then release
            # each once its events in flight have outcomes.
            await self._on_change(conn, set())
        if steps.offer:
            # Nothing of theirs runs here (the plan chose them so), and their queued
            # events were dropped above: given at once, to the member the plan chose.
            receivers: dict[str, list[int]] = {}
            for p, receiver in steps.offer:
                receivers.setdefault(receiver, []).append(p)
            for receiver, parts in sorted(receivers.items()):
                self._lose(set(await store.offer(conn, parts, receiver)))
        release = set(steps.release)
        if handing:
            # Their queued events were dropped when reading stopped: those with nothing
            # left in a running group can go back now.
            release |= handing - offered - self._busy()
        if release:
            released = set(await store.release(conn, sorted(release)))
            self._lose(released)
        short = False
        if steps.acquire:
            # Waits for the previous owner's fenced commits, but never long enough to
            # miss our own heartbeat.
            try:
                got = await store.acquire(conn, steps.acquire, lock_timeout=self.heartbeat / 2)
                short = len(got) < len(set(steps.acquire))
            except asyncpg.LockNotAvailableError:
                # A paused owner's outcome transaction still holds its fence: the server
                # cuts it off soon (idle_in_transaction_session_timeout); try again then.
                got = {}
            self.owned.update(got)
            gained |= set(got)
        if gained:
            self.unstarted -= gained
            try:
                await self._on_change(conn, gained)
            except BaseException:
                # Committed as ours, not read: kept out of the read (and of the stored
                # cursors) until a later step starts their stream from their cursors.
                self.unstarted |= gained & set(self.owned)
                raise
        return short

    def _lose(self, lost: set[int]) -> None:
        """Partitions are not ours any more: forget them at once, with no await between,
        so that no cursor of theirs is stored past an event this process let go of."""
        if not lost:
            return
        for p in lost:
            self.owned.pop(p, None)
            self.handing_over.discard(p)
            self.unstarted.discard(p)
        self._on_lost(lost)

    async def run(self, stopping: asyncio.Event) -> None:
        """Step until cancelled (after ``stopping``, only heartbeat); database failures are
        retried a third of a heartbeat later.

        Each step borrows a connection that no worker competes for (``connection``): with
        the workers holding the rest of the pool, a heartbeat must never wait for one (the
        process would lose every lease).
        """
        delay = 0.0
        while True:
            # asyncio.timeout, not wait_for: no task made per beat.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.wake.wait()
            self.wake.clear()
            try:
                async with self._connection() as conn:
                    # Bounded: a statement lost in a half-open connection would otherwise
                    # hold the borrowed read connection, and the leases, until TCP gives up.
                    # The TimeoutError leaves through the borrow, which ends that connection.
                    async with asyncio.timeout(self.step_limit):
                        if stopping.is_set():
                            # Draining: keep the leases alive until they are handed back
                            # (the task is cancelled then), take and give nothing.
                            await self.store.heartbeat(conn)
                            delay = self.heartbeat
                            continue
                        delay = await self.step(conn)
            except Exception as exc:
                if classify(exc, handler=False) is not FailureKind.INFRASTRUCTURE:
                    raise
                logger.warning(
                    "group step failed (%s: %s); again in %.1fs",
                    type(exc).__name__,
                    exc,
                    self.heartbeat / 3,
                    extra=self._log,
                )
                delay = self.heartbeat / 3

    async def leave(self, conn: asyncpg.Connection) -> None:
        """After draining: release every lease and leave (the others take over at once)."""
        await self.store.leave(conn)
        self.owned.clear()
        self.unstarted.clear()


class MemberConnection:
    """A connection for one step of the member task that no worker competes for.

    With ``dsn``, one of its own, made as the LISTEN connection is (and made again after
    a failure); otherwise the read loop's pool connection between two reads (``borrow``).
    Either way the pool keeps its ``concurrency + 2`` sizing. (``listen_connect`` is the
    LISTEN connection's factory and stays that: it is called once per session.)
    """

    def __init__(
        self,
        dsn: str | None,
        borrow: Callable[[], contextlib.AbstractAsyncContextManager[asyncpg.Connection]],
        *,
        close_timeout: float,
    ) -> None:
        self._dsn = dsn
        self._borrow = borrow
        self._close_timeout = close_timeout
        self._conn: asyncpg.Connection | None = None

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[asyncpg.Connection]:
        """The connection for one step; a failure inside makes a new one next time."""
        if self._dsn is None:
            async with self._borrow() as conn:
                yield conn
            return
        conn = self._conn
        if conn is None or conn.is_closed():
            conn = self._conn = await asyncpg.connect(self._dsn)
        try:
            yield conn
        except BaseException:
            # The statement may have left it broken: make a new one next time.
            self._conn = None
            terminate(conn)
            raise

    async def aclose(self) -> None:
        """Close the connection of its own, if one was made (never raises)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), self._close_timeout)
            except Exception:
                terminate(conn)  # closing is a courtesy: the server ends it either way


#: A backlog change smaller than this is not reported before the next heartbeat.
_REPORT_STEP = 32
#: After an acquisition that others beat in part, the next step comes this fraction of a
#: heartbeat later: soon enough that nothing free waits a heartbeat for an owner, late
#: enough that two members racing for the same partitions do not spin.
_SHORT_STEPS = 20


def _ranges(parts: Iterable[int]) -> str:
    return ", ".join(str(p) for p in sorted(parts))
