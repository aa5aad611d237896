"""The demo: a small but real scenario from the credit-reservation domain, end to end.

What runs (``dispatch-aio demo``, or ``await run_demo()``):

- **Revenue**, the producer, owns a ``credit_reservation`` table. A few producer tasks
  reserve credits for people's lessons, then lock, consume, forfeit or release them.
  Each step is one transaction that updates the reservation row *and* publishes the
  matching event on the same connection (transactional outbox). A couple of those
  transactions fail on purpose after publishing: their events must never appear.
- **Coaching** keeps an ``availability`` projection (one row per reservation: the
  slot is ``held``, ``booked`` or ``open``) through its handler's connection, so each
  projection write commits with the event's outcome. It runs as two workers of the same
  consumer, as two processes would: each event is handled by exactly one of them, the
  other counts a dedup hit.
- **platform-warehouse** counts events per type in memory (a handler without a
  connection). It rejects three chosen events on every attempt: they are retried with
  short delays, then dead-lettered. The demo then "fixes" the handler and replays the
  dead letters; each is handled again exactly once and its row is resolved.

At the end it prints a summary and checks that the projection matches Revenue's table,
that the warehouse saw every event once, and that rolled-back events stayed invisible.

Both domain tables live in the dispatcher's schema here for brevity; real services keep
their own databases. With no DSN the demo starts an embedded PostgreSQL (schema
``public``); with a DSN it works in a fresh schema ``dispatch_demo_<random>``. Either is
removed at the end unless ``keep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import shutil
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pydantic import BaseModel, ConfigDict

from ._consumer import Consumer
from ._db import CONNECTION_ERRORS
from ._deadletters import DeadLetters
from ._dispatcher import Dispatcher
from ._embedded import EmbeddedPostgres
from ._envelope import Event, format_timestamp
from ._errors import ConfigurationError, DatabaseUnavailableError, DispatchError, UsageError
from ._identifiers import quote_ident
from ._ids import new_id
from ._migrate import migrate
from ._registry import Registry

__all__ = ["ConsumerSummary", "DeadLetterSummary", "DemoSummary", "run_demo"]

PRODUCER = "revenue"
TENANT_ID = "tnt_demo"
ACTOR = "system:revenue"
OPERATOR = "demo:operator"
COACHING = "coaching"
WAREHOUSE = "platform-warehouse"

#: The five events of a reservation's life, all published by Revenue.
EVENT_TYPES = (
    "credit.reserved",
    "credit.locked",
    "credit.consumed",
    "credit.forfeited",
    "credit.released",
)
#: Coaching does not listen to credit.consumed: a spent slot stays booked.
COACHING_TYPES = ("credit.reserved", "credit.locked", "credit.forfeited", "credit.released")

#: Revenue's reservation state -> what Coaching's projection must say about the slot.
EXPECTED_SLOT = {
    "reserved": "held",
    "locked": "booked",
    "consumed": "booked",
    "forfeited": "open",
    "released": "open",
}

_PRODUCERS = 4
_COACHING_WORKERS = 2
_RETRY_DELAYS = (0.05, 0.1)
_POISONED = 3
_STALL_TIMEOUT = 60.0
_RELEASE_REASONS = (
    "weather",
    "site_closure",
    "coach_unavailable_reschedule_failed",
    "customer_requested_in_window",
)


# -- the summary ---------------------------------------------------------------------


class ConsumerSummary(BaseModel):
    """What one consumer (all its workers together) did during the demo."""

    model_config = ConfigDict(frozen=True)

    name: str
    workers: int
    event_types: tuple[str, ...]
    #: Committed events of the types it subscribes to.
    expected: int
    #: Handled on delivery (summed over workers; a dedup hit is not counted).
    handled: int
    #: Handled again from a dead letter after the fix.
    replayed: int
    dedup_hits: int
    retried: int
    dead_lettered: int
    #: End-to-end latency, from the event's ``occurred_at`` (set at publish, before the
    #: producer's commit) to the first start of a handler for it.
    latency_p50_ms: float | None
    latency_p99_ms: float | None

    @property
    def complete(self) -> bool:
        """Every expected event was handled once, on delivery or by replay."""
        return self.handled + self.replayed == self.expected


class DeadLetterSummary(BaseModel):
    """One dead letter of the demo and what became of it."""

    model_config = ConfigDict(frozen=True)

    dead_letter_id: str
    consumer: str
    event_id: str
    event_type: str
    attempts: int
    error: str
    action: Literal["replayed", "resolved"]
    replay_status: str | None
    resolved_by: str | None
    resolution_note: str | None
    #: How many times the handler succeeded for this event after the fix (1 is right).
    handled_after_fix: int


class DemoSummary(BaseModel):
    """Every figure the demo prints, and the checks it made."""

    model_config = ConfigDict(frozen=True)

    embedded: bool
    kept: bool
    #: The database's DSN when it was kept running (embedded PostgreSQL), else None.
    dsn: str | None
    db_schema: str
    server_version: str
    events_requested: int
    events_published: int
    published_by_type: dict[str, int]
    transactions_rolled_back: int
    #: Events of rolled-back transactions found in the event table (0 is right).
    rolled_back_events_visible: int
    reservations: int
    reservations_by_state: dict[str, int]
    consumers: tuple[ConsumerSummary, ...]
    dead_letters: tuple[DeadLetterSummary, ...]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    projection_rows: int
    projection_mismatches: int
    projection_ok: bool
    #: The warehouse saw every committed event exactly once, per-type counts included.
    warehouse_ok: bool
    #: The event table holds exactly the committed events and none of the rolled back.
    outbox_ok: bool
    #: Warnings and errors the library logged while no logging was configured: the
    #: expected ones (retries and dead letters of the failing events) are only counted.
    library_warnings: int
    #: The messages of any others; none is right.
    unexpected_warnings: tuple[str, ...]
    #: From the call to the summary, embedded server start included.
    duration_s: float

    @property
    def ok(self) -> bool:
        """All checks passed."""
        return (
            self.projection_ok
            and self.warehouse_ok
            and self.outbox_ok
            and all(c.complete for c in self.consumers)
            and all(d.handled_after_fix == 1 for d in self.dead_letters)
        )


# -- Revenue: the producer -----------------------------------------------------------


@dataclass(slots=True)
class _Reservation:
    credit_reservation_id: str
    person_id: str
    lesson_id: str
    credits: int
    lesson_starts_at: datetime
    state: str = "reserved"


class _SimulatedFailure(Exception):
    """A failure after publish, inside the producer's transaction: it rolls back."""


class _Revenue:
    """Publishes ``events`` committed events from a few concurrent producer tasks."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dispatcher: Dispatcher,
        schema: str,
        *,
        events: int,
        rate: float,
        rng: random.Random,
    ) -> None:
        self.pool = pool
        self.dispatcher = dispatcher
        self.table = f"{quote_ident(schema)}.credit_reservation"
        self.events = events
        self.rate = rate
        self.rng = rng
        self.published = 0
        self.by_type: Counter[str] = Counter()
        self.rolled_back: list[str] = []
        self.poisoned: set[str] = set()
        self.reservations: list[_Reservation] = []
        self._next_slot = 0
        n_aborts = max(1, events // 100)
        self._abort_slots = {int(events * (i + 0.5) / n_aborts) for i in range(n_aborts)}
        self._poison_slots = (
            {events * (i + 1) // (_POISONED + 1) for i in range(_POISONED)}
            if events >= 4 * _POISONED
            else set()
        )
        people = max(_PRODUCERS, events // 10)
        self._people = [new_id("per") for _ in range(people)]
        self._lessons = [new_id("les") for _ in range(max(4, events // 25))]
        now = datetime.now(UTC)
        self._lesson_start = {
            lesson: (now + timedelta(days=rng.randint(1, 14), hours=rng.randint(8, 19))).replace(
                minute=0, second=0, microsecond=0
            )
            for lesson in self._lessons
        }

    async def run(self) -> None:
        """Run the producer tasks until ``events`` events are committed."""
        async with asyncio.TaskGroup() as tg:
            for i in range(_PRODUCERS):
                tg.create_task(self._produce(self._people[i::_PRODUCERS]))

    def _claim(self) -> int | None:
        if self._next_slot >= self.events:
            return None
        slot = self._next_slot
        self._next_slot += 1
        return slot

    async def _produce(self, people: list[str]) -> None:
        mine: list[_Reservation] = []
        mean_gap = _PRODUCERS / self.rate if self.rate > 0 else 0.0
        while (slot := self._claim()) is not None:
            if mean_gap:
                await asyncio.sleep(self.rng.expovariate(1 / mean_gap))
            action, reservation = self._choose(people, mine)
            if slot in self._abort_slots:
                await self._transact(action, reservation, poison=False, abort=True)
            committed = await self._transact(action, reservation, poison=slot in self._poison_slots)
            if committed and action == "reserve":
                mine.append(reservation)
                self.reservations.append(reservation)

    def _choose(self, people: list[str], mine: list[_Reservation]) -> tuple[str, _Reservation]:
        """The next step of one producer task: a new reservation or a transition."""
        rng = self.rng
        active = [r for r in mine if r.state in ("reserved", "locked")]
        if not active or (len(active) < 3 * len(people) and rng.random() < 0.4):
            lesson = rng.choice(self._lessons)
            return "reserve", _Reservation(
                credit_reservation_id=new_id("crr"),
                person_id=rng.choice(people),
                lesson_id=lesson,
                credits=rng.choice((1, 1, 1, 2)),
                lesson_starts_at=self._lesson_start[lesson],
            )
        reservation = rng.choice(active)
        if reservation.state == "reserved":
            action = rng.choices(("lock", "release"), weights=(7, 3))[0]
        else:
            action = rng.choices(("consume", "forfeit", "release"), weights=(6, 2, 2))[0]
        return action, reservation

    async def _transact(
        self, action: str, reservation: _Reservation, *, poison: bool, abort: bool = False
    ) -> bool:
        """One Revenue transaction: change the row and publish the event; True if committed."""
        stamp = format_timestamp(datetime.now(UTC))
        new_state = _NEW_STATE[action]
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    if action == "reserve":
                        await conn.execute(
                            f"INSERT INTO {self.table} (credit_reservation_id, person_id, "
                            "lesson_id, credits, state, lesson_starts_at) "
                            "VALUES ($1, $2, $3, $4, 'reserved', $5)",
                            reservation.credit_reservation_id,
                            reservation.person_id,
                            reservation.lesson_id,
                            reservation.credits,
                            reservation.lesson_starts_at,
                        )
                    else:
                        status = await conn.execute(
                            f"UPDATE {self.table} SET state = $2, updated_at = now() "
                            "WHERE credit_reservation_id = $1 AND state = $3",
                            reservation.credit_reservation_id,
                            new_state,
                            reservation.state,
                        )
                        if status != "UPDATE 1":
                            raise DispatchError(
                                f"demo bug: reservation {reservation.credit_reservation_id} "
                                f"is not {reservation.state} in Revenue's table"
                            )
                    event_type, payload = self._event(action, reservation, stamp)
                    envelope = await self.dispatcher.publish(
                        event_type, payload, subject=reservation.person_id, actor=ACTOR, conn=conn
                    )
                    if abort:
                        self.rolled_back.append(envelope.event_id)
                        raise _SimulatedFailure("the ledger write failed after publish")
                    if poison:
                        # Before commit: no consumer can see the event before this line.
                        self.poisoned.add(envelope.event_id)
            except _SimulatedFailure:
                return False
        reservation.state = new_state
        self.published += 1
        self.by_type[event_type] += 1
        return True

    def _event(self, action: str, r: _Reservation, stamp: str) -> tuple[str, dict[str, Any]]:
        base = {"credit_reservation_id": r.credit_reservation_id, "lesson_id": r.lesson_id}
        rng = self.rng
        if action == "reserve":
            return "credit.reserved", {
                **base,
                "person_id": r.person_id,
                "reserved_credits": r.credits,
                "funding_status": rng.choice(("funded", "funded", "pending_funding")),
                "lesson_starts_at": format_timestamp(r.lesson_starts_at),
                "reserved_at": stamp,
            }
        if action == "lock":
            return "credit.locked", {
                **base,
                "person_id": r.person_id,
                "locked_credits": r.credits,
                "locked_at": stamp,
            }
        if action == "consume":
            return "credit.consumed", {
                **base,
                "consumed_credits": r.credits,
                "consumed_at": stamp,
            }
        if action == "forfeit":
            return "credit.forfeited", {
                **base,
                "forfeited_credits": r.credits,
                "forfeiture_reason": rng.choice(("late_cancel", "no_show")),
                "forfeited_at": stamp,
            }
        return "credit.released", {
            **base,
            "person_id": r.person_id,
            "released_credits": r.credits,
            "released_from": r.state,
            "released_at": stamp,
            "reason_code": rng.choice(_RELEASE_REASONS),
        }


_NEW_STATE = {
    "reserve": "reserved",
    "lock": "locked",
    "consume": "consumed",
    "forfeit": "forfeited",
    "release": "released",
}


# -- the consumers -------------------------------------------------------------------


class WarehouseLoadError(Exception):
    """The warehouse's (simulated) loader rejects an event until the demo fixes it."""


@dataclass
class _Observed:
    """What the demo's handlers saw, for the summary and the checks."""

    #: consumer -> event_id -> ms from occurred_at to the first handler start.
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Warehouse: events loaded per type, and how often each event was loaded.
    warehouse_by_type: Counter[str] = field(default_factory=Counter)
    warehouse_loads: Counter[str] = field(default_factory=Counter)
    warehouse_fixed: bool = False

    def started(self, consumer: str, event: Event) -> None:
        seen = self.latency_ms.setdefault(consumer, {})
        if event.event_id not in seen:
            seen[event.event_id] = (time.time() - event.occurred_at.timestamp()) * 1000.0


def _coaching_worker(
    pool: asyncpg.Pool, schema: str, registry: Registry, observed: _Observed
) -> Consumer:
    """One worker of Coaching's consumer: keeps the availability projection."""
    table = f"{quote_ident(schema)}.availability"
    consumer = Consumer(
        pool,
        name=COACHING,
        registry=registry,
        db_schema=schema,
        concurrency=4,
        # One event per transaction: two workers racing for the same events then never
        # hold each other's rows in opposite orders.
        max_group=1,
        poll_interval=1.0,
        retry_delays=_RETRY_DELAYS,
        drain_timeout=10.0,
    )

    async def set_slot(event: Event, conn: asyncpg.Connection, slot: str) -> None:
        await conn.execute(
            f"UPDATE {table} SET slot_state = $2, last_event_id = $3, updated_at = now() "
            "WHERE credit_reservation_id = $1",
            event.payload["credit_reservation_id"],
            slot,
            event.event_id,
        )

    @consumer.on("credit.reserved")
    async def on_reserved(event: Event, conn: asyncpg.Connection) -> None:
        observed.started(COACHING, event)
        p = event.payload
        # ON CONFLICT: the other worker may hold the same event in flight; whichever
        # commits second rolls back as a duplicate anyway.
        await conn.execute(
            f"INSERT INTO {table} (credit_reservation_id, lesson_id, person_id, credits, "
            "slot_state, last_event_id) VALUES ($1, $2, $3, $4, 'held', $5) "
            "ON CONFLICT (credit_reservation_id) DO NOTHING",
            p["credit_reservation_id"],
            p["lesson_id"],
            p["person_id"],
            p["reserved_credits"],
            event.event_id,
        )

    @consumer.on("credit.locked")
    async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
        observed.started(COACHING, event)
        await set_slot(event, conn, "booked")

    @consumer.on("credit.forfeited")
    async def on_forfeited(event: Event, conn: asyncpg.Connection) -> None:
        observed.started(COACHING, event)
        await set_slot(event, conn, "open")

    @consumer.on("credit.released")
    async def on_released(event: Event, conn: asyncpg.Connection) -> None:
        observed.started(COACHING, event)
        await set_slot(event, conn, "open")

    return consumer


def _warehouse(
    pool: asyncpg.Pool, schema: str, registry: Registry, observed: _Observed, poisoned: set[str]
) -> Consumer:
    """The warehouse's consumer: counts events per type; fails for ``poisoned`` until fixed."""
    consumer = Consumer(
        pool,
        name=WAREHOUSE,
        registry=registry,
        db_schema=schema,
        concurrency=4,
        poll_interval=1.0,
        retry_delays=_RETRY_DELAYS,
        drain_timeout=10.0,
    )

    async def load(event: Event) -> None:
        observed.started(WAREHOUSE, event)
        if event.event_id in poisoned and not observed.warehouse_fixed:
            raise WarehouseLoadError(
                f"loader rejected {event.event_type} {event.event_id}: "
                "column lesson_id is too narrow"
            )
        observed.warehouse_by_type[event.event_type] += 1
        observed.warehouse_loads[event.event_id] += 1

    for event_type in EVENT_TYPES:
        consumer.on(event_type)(load)
    return consumer


# -- output --------------------------------------------------------------------------


class _Progress:
    """Phase lines, and a live status line (redrawn on a terminal, else printed each second)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        isatty = getattr(out, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.started = time.monotonic()
        self._live = False
        self._last_plain = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, text: str = "") -> None:
        """Print a permanent line (clearing the live line first on a terminal)."""
        if self._live:
            self.out.write("\r\x1b[K")
            self._live = False
        self.out.write(text + "\n")
        self.out.flush()

    def status(self, text: str, *, force: bool = False) -> None:
        """Show the live status line."""
        stamped = f"  [{self.elapsed():5.1f}s] {text}"
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            if len(stamped) > width > 10:
                stamped = stamped[: width - 3] + "..."
            self.out.write("\r\x1b[K" + stamped)
            self.out.flush()
            self._live = True
        elif force or time.monotonic() - self._last_plain >= 1.0:
            self._last_plain = time.monotonic()
            self.line(stamped)

    def end_live(self) -> None:
        """Leave the last live line on screen."""
        if self._live:
            self.out.write("\n")
            self.out.flush()
            self._live = False


@contextlib.contextmanager
def _captured_library_logs() -> Iterator[list[logging.LogRecord]]:
    """Keep the library's warnings off the screen unless the application set up logging.

    The demo's failing handler makes the consumer log a warning per retry and an error
    per dead letter; they are expected, and counted in the summary instead.
    """
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("dispatch_aio")
    if logger.hasHandlers():
        yield records
        return

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return round(ordered[rank - 1], 2)


def _redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    except ValueError:
        return "<unparsable DSN>"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# -- the database --------------------------------------------------------------------


@dataclass
class _Database:
    dsn: str
    schema: str
    embedded: EmbeddedPostgres | None


@contextlib.asynccontextmanager
async def _database(dsn: str | None, keep: bool, progress: _Progress) -> AsyncIterator[_Database]:
    """An embedded server (schema public) or a fresh schema on ``dsn``.

    The schema is dropped by the run itself; the embedded server is stopped and removed
    here, or with ``keep`` detached from this process and its DSN printed.
    """
    if dsn is not None:
        db = _Database(dsn, f"dispatch_demo_{secrets.token_hex(4)}", None)
        try:
            yield db
        finally:
            if keep:
                progress.line(f"Kept schema {db.schema} on {_redact(dsn)}")
        return
    progress.line("Starting an embedded PostgreSQL (fsync on) ...")
    server = EmbeddedPostgres(fsync=True)
    started = time.monotonic()
    await asyncio.to_thread(server.start)
    progress.line(f"  ready in {time.monotonic() - started:.1f}s")
    db = _Database(server.dsn(), "public", server)
    try:
        yield db
    finally:
        if keep:
            directory, pid = server.detach()
            progress.line(f"The database is still running: {db.dsn}")
            progress.line(f"  look around: dispatch-aio status --dsn '{db.dsn}'")
            progress.line(
                f"  stop it: kill -INT {pid if pid is not None else '<postmaster pid>'}"
                f" && rm -rf {directory}"
            )
        else:
            await asyncio.to_thread(server.stop)


async def _connect(dsn: str, size: int) -> asyncpg.Pool:
    """A pool on ``dsn``; DatabaseUnavailableError when nothing usable answers there."""
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn, min_size=2, max_size=size, timeout=10, command_timeout=60
        )
    except asyncpg.ClientConfigurationError as exc:
        raise ConfigurationError(f"invalid DSN {_redact(dsn)!r}: {exc}") from exc
    except (*CONNECTION_ERRORS, TimeoutError, asyncpg.PostgresError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DatabaseUnavailableError(
            f"cannot connect to PostgreSQL at {_redact(dsn)}: {reason}"
        ) from exc
    return pool


_DOMAIN_TABLES = """
CREATE TABLE {schema}.credit_reservation (
    credit_reservation_id text PRIMARY KEY,
    person_id        text        NOT NULL,
    lesson_id        text        NOT NULL,
    credits          integer     NOT NULL CHECK (credits > 0),
    state            text        NOT NULL CHECK (state IN
                         ('reserved', 'locked', 'consumed', 'forfeited', 'released')),
    lesson_starts_at timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {schema}.availability (
    credit_reservation_id text PRIMARY KEY,
    lesson_id        text        NOT NULL,
    person_id        text        NOT NULL,
    credits          integer     NOT NULL,
    slot_state       text        NOT NULL CHECK (slot_state IN ('held', 'booked', 'open')),
    last_event_id    text        NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
"""

_PROJECTION_CHECK = """
SELECT count(*) FILTER (WHERE a.credit_reservation_id IS NOT NULL) AS rows,
       count(*) FILTER (
           WHERE a.credit_reservation_id IS NULL
              OR r.credit_reservation_id IS NULL
              OR a.lesson_id IS DISTINCT FROM r.lesson_id
              OR a.person_id IS DISTINCT FROM r.person_id
              OR a.credits IS DISTINCT FROM r.credits
              OR a.slot_state IS DISTINCT FROM (CASE r.state {expected_slot} END)
       ) AS mismatches
FROM {schema}.credit_reservation r
FULL JOIN {schema}.availability a USING (credit_reservation_id)
"""


# -- the run -------------------------------------------------------------------------


async def run_demo(
    dsn: str | None = None,
    *,
    events: int = 200,
    keep: bool = False,
    out: TextIO = sys.stdout,
    rate: float = 100.0,
    seed: int | None = None,
) -> DemoSummary:
    """Run the demo scenario, print progress and a summary to ``out``; return the figures.

    With no ``dsn``, starts an embedded PostgreSQL (``pip install dispatch-aio[embedded]``)
    and removes it at the end; with ``keep`` it is left running and its DSN printed.
    With a ``dsn``, works in a fresh schema ``dispatch_demo_<random>``, dropped at the
    end unless ``keep``. ``events`` is how many events Revenue commits; ``rate`` paces
    them (events per second; 0 for as fast as possible); ``seed`` makes the scenario's
    choices repeatable.

    Raises DatabaseUnavailableError when nothing answers at ``dsn``, ConfigurationError
    for an unusable DSN or missing PostgreSQL binaries, UsageError for bad arguments.
    """
    if isinstance(events, bool) or not isinstance(events, int) or events < 1:
        raise UsageError(f"events must be a positive integer, got {events!r}")
    if events > 100_000:
        raise UsageError(f"events must be at most 100000, got {events}")
    if rate < 0:
        raise UsageError(f"rate must be >= 0 events per second, got {rate}")
    progress = _Progress(out)
    progress.line(
        f"dispatch-aio demo: {events} credit-reservation events, Revenue -> {COACHING}, {WAREHOUSE}"
    )
    with _captured_library_logs() as records:
        async with _database(dsn, keep, progress) as db:
            summary = await _run(
                db,
                events=events,
                keep=keep,
                rate=rate,
                seed=seed,
                progress=progress,
                records=records,
            )
            _print_summary(summary, progress)
    return summary


async def _run(
    db: _Database,
    *,
    events: int,
    keep: bool,
    rate: float,
    seed: int | None,
    progress: _Progress,
    records: list[logging.LogRecord],
) -> DemoSummary:
    schema = db.schema
    qschema = quote_ident(schema)
    pool_size = _PRODUCERS + _COACHING_WORKERS * (4 + 2) + (4 + 2) + 2
    pool = await _connect(db.dsn, pool_size)
    created_schema = False
    try:
        server_version = str(await pool.fetchval("SHOW server_version"))
        where = "embedded PostgreSQL" if db.embedded else _redact(db.dsn)
        progress.line(f"Database: {where} (PostgreSQL {server_version}), schema {schema}")
        if db.embedded is None:
            created_schema = True  # from here on, drop it at the end unless keep
        await migrate(pool, schema)
        await pool.execute(_DOMAIN_TABLES.format(schema=qschema))
        progress.line("Migrated; created Revenue's credit_reservation and Coaching's availability")
        summary = await _scenario(
            pool,
            db,
            events=events,
            rate=rate,
            seed=seed,
            progress=progress,
            server_version=server_version,
            keep=keep,
            records=records,
        )
    finally:
        try:
            if created_schema and not keep:
                with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
                    await pool.execute(f"DROP SCHEMA IF EXISTS {qschema} CASCADE")
        finally:
            await pool.close()
    return summary


async def _scenario(
    pool: asyncpg.Pool,
    db: _Database,
    *,
    events: int,
    rate: float,
    seed: int | None,
    progress: _Progress,
    server_version: str,
    keep: bool,
    records: list[logging.LogRecord],
) -> DemoSummary:
    schema = db.schema
    qschema = quote_ident(schema)
    registry = Registry.load()
    rng = random.Random(seed)
    dispatcher = Dispatcher(
        pool, producer=PRODUCER, tenant_id=TENANT_ID, registry=registry, schema=schema
    )
    revenue = _Revenue(pool, dispatcher, schema, events=events, rate=rate, rng=rng)
    observed = _Observed()
    coaching = [
        _coaching_worker(pool, schema, registry, observed) for _ in range(_COACHING_WORKERS)
    ]
    warehouse = _warehouse(pool, schema, registry, observed, revenue.poisoned)
    consumers = [*coaching, warehouse]
    dead_letters = DeadLetters(pool, schema)

    def status() -> str:
        handled = sum(c.stats.handled for c in coaching)
        w = warehouse.stats
        return (
            f"published {revenue.published}/{events} | {COACHING} {handled} handled, "
            f"{sum(c.stats.dedup_hits for c in coaching)} dedup hits | {WAREHOUSE} "
            f"{w.handled + w.replayed} handled, retries {w.retried}, "
            f"dead letters {w.dead_lettered}"
        )

    async def ticker() -> None:
        while True:
            progress.status(status())
            await asyncio.sleep(0.5)

    async with contextlib.AsyncExitStack() as stack:
        for consumer in consumers:
            await stack.enter_async_context(consumer)
        progress.line(
            f"Consumers running: {COACHING} ({_COACHING_WORKERS} workers), {WAREHOUSE}; "
            f"Revenue publishing from {_PRODUCERS} tasks"
        )
        tick = asyncio.create_task(ticker())
        try:
            await revenue.run()
            async with asyncio.timeout(_STALL_TIMEOUT):
                for consumer in consumers:
                    await consumer.wait_idle()
            progress.status(status(), force=True)
            progress.end_live()
            progress.line(
                f"Revenue committed {revenue.published} events "
                f"({_plural(len(revenue.rolled_back), 'transaction')} rolled back on purpose); "
                "consumers caught up"
            )
            letters = (await dead_letters.list(WAREHOUSE, limit=50)).items
            if letters:
                progress.line(f"{_plural(len(letters), 'dead letter')} in {WAREHOUSE}:")
                for letter in letters:
                    progress.line(
                        f"  {letter.dead_letter_id}  {letter.event_type}  "
                        f"{letter.attempts} attempts  {letter.error_type}"
                    )
                progress.line("Fixing the warehouse handler and replaying them ...")
                observed.warehouse_fixed = True
                for letter in letters:
                    await dead_letters.replay(letter.dead_letter_id, replayed_by=OPERATOR)
                async with asyncio.timeout(_STALL_TIMEOUT):
                    pending = {letter.dead_letter_id for letter in letters}
                    while pending:
                        for dead_letter_id in list(pending):
                            row = await dead_letters.get(dead_letter_id)
                            if row.replay_status != "pending":
                                pending.discard(dead_letter_id)
                        if pending:
                            await asyncio.sleep(0.05)
                    await warehouse.wait_idle()
            progress.status(status(), force=True)
            progress.end_live()
        except TimeoutError:
            raise DispatchError(
                f"the demo stalled: consumers were not done after {_STALL_TIMEOUT:.0f}s"
            ) from None
        finally:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
            progress.end_live()
    # Consumers are stopped: every figure below is final.
    letter_summaries = []
    for letter in letters:
        row = await dead_letters.get(letter.dead_letter_id)
        letter_summaries.append(
            DeadLetterSummary(
                dead_letter_id=row.dead_letter_id,
                consumer=row.consumer,
                event_id=row.event_id,
                event_type=row.event_type,
                attempts=row.attempts,
                error=f"{row.error_type}: {row.error_message}",
                action="replayed",
                replay_status=row.replay_status,
                resolved_by=row.resolved_by,
                resolution_note=row.resolution_note,
                handled_after_fix=observed.warehouse_loads[row.event_id],
            )
        )
    published_by_type = {
        r["event_type"]: int(r["n"])
        for r in await pool.fetch(
            f"SELECT event_type, count(*) AS n FROM {qschema}.dispatcher_event "
            "WHERE producer = $1 GROUP BY event_type ORDER BY event_type",
            PRODUCER,
        )
    }
    total = sum(published_by_type.values())
    visible = int(
        await pool.fetchval(
            f"SELECT count(*) FROM {qschema}.dispatcher_event WHERE event_id = ANY($1::text[])",
            revenue.rolled_back,
        )
    )
    outbox_ok = (
        total == revenue.published == events
        and visible == 0
        and published_by_type == dict(revenue.by_type)
    )
    by_state = {
        r["state"]: int(r["n"])
        for r in await pool.fetch(
            f"SELECT state, count(*) AS n FROM {qschema}.credit_reservation "
            "GROUP BY state ORDER BY state"
        )
    }
    expected_slot = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in EXPECTED_SLOT.items())
    check = await pool.fetchrow(
        _PROJECTION_CHECK.format(schema=qschema, expected_slot=expected_slot)
    )
    projection_rows, mismatches = int(check["rows"]), int(check["mismatches"])
    warehouse_ok = (
        dict(observed.warehouse_by_type) == published_by_type
        and len(observed.warehouse_loads) == total
        and all(n == 1 for n in observed.warehouse_loads.values())
    )

    def figures(name: str, workers: list[Consumer], types: Sequence[str]) -> ConsumerSummary:
        latencies = list(observed.latency_ms.get(name, {}).values())
        return ConsumerSummary(
            name=name,
            workers=len(workers),
            event_types=tuple(types),
            expected=sum(published_by_type.get(t, 0) for t in types),
            handled=sum(c.stats.handled for c in workers),
            replayed=sum(c.stats.replayed for c in workers),
            dedup_hits=sum(c.stats.dedup_hits for c in workers),
            retried=sum(c.stats.retried for c in workers),
            dead_lettered=sum(c.stats.dead_lettered for c in workers),
            latency_p50_ms=_percentile(latencies, 50),
            latency_p99_ms=_percentile(latencies, 99),
        )

    everything = [v for per in observed.latency_ms.values() for v in per.values()]
    embedded = db.embedded is not None
    return DemoSummary(
        embedded=embedded,
        kept=keep,
        dsn=db.dsn if keep and embedded else None,
        db_schema=schema,
        server_version=server_version,
        events_requested=events,
        events_published=total,
        published_by_type=published_by_type,
        transactions_rolled_back=len(revenue.rolled_back),
        rolled_back_events_visible=visible,
        reservations=sum(by_state.values()),
        reservations_by_state=by_state,
        consumers=(
            figures(COACHING, coaching, COACHING_TYPES),
            figures(WAREHOUSE, [warehouse], EVENT_TYPES),
        ),
        dead_letters=tuple(letter_summaries),
        latency_p50_ms=_percentile(everything, 50),
        latency_p99_ms=_percentile(everything, 99),
        projection_rows=projection_rows,
        projection_mismatches=mismatches,
        projection_ok=mismatches == 0 and projection_rows == sum(by_state.values()),
        warehouse_ok=warehouse_ok,
        outbox_ok=outbox_ok,
        library_warnings=len(records),
        unexpected_warnings=tuple(
            f"{r.levelname}: {r.getMessage()}"
            for r in records
            if getattr(r, "event_id", None) not in revenue.poisoned
        ),
        duration_s=round(progress.elapsed(), 2),
    )


def _print_summary(summary: DemoSummary, progress: _Progress) -> None:
    def verdict(ok: bool) -> str:
        return "OK" if ok else "MISMATCH"

    line = progress.line
    line()
    line(f"Summary ({summary.duration_s:.1f}s)")
    types = ", ".join(f"{t} {n}" for t, n in summary.published_by_type.items())
    line(f"  Revenue published {summary.events_published} events: {types}")
    line(
        f"  {_plural(summary.transactions_rolled_back, 'transaction')} rolled back after publish: "
        f"{summary.rolled_back_events_visible} of their events visible "
        f"[{verdict(summary.outbox_ok)}]"
    )
    states = ", ".join(f"{s} {n}" for s, n in summary.reservations_by_state.items())
    line(f"  {summary.reservations} reservations: {states}")
    line()
    header = (
        f"  {'consumer':<20}{'workers':>8}{'expected':>10}{'handled':>9}{'replayed':>10}"
        f"{'dedup':>7}{'retries':>9}{'dead':>6}{'p50 ms':>9}{'p99 ms':>9}"
    )
    line(header)
    for c in summary.consumers:
        line(
            f"  {c.name:<20}{c.workers:>8}{c.expected:>10}{c.handled:>9}{c.replayed:>10}"
            f"{c.dedup_hits:>7}{c.retried:>9}{c.dead_lettered:>6}"
            f"{_ms(c.latency_p50_ms):>9}{_ms(c.latency_p99_ms):>9}  [{verdict(c.complete)}]"
        )
    line("  (dedup: events the other worker had already handled, skipped without effect)")
    line()
    if summary.dead_letters:
        line("  Dead letters:")
        for d in summary.dead_letters:
            line(f"    {d.dead_letter_id} {d.event_type} after {d.attempts} attempts: {d.error}")
            line(
                f"      {d.action} by {d.resolved_by or '-'} -> {d.replay_status or '-'}, "
                f"handled {d.handled_after_fix} time(s) after the fix "
                f"[{verdict(d.handled_after_fix == 1)}]"
            )
    else:
        line("  Dead letters: none (too few events to pick failing ones)")
    line(
        f"  End-to-end latency (occurred_at -> handler start): p50 "
        f"{_ms(summary.latency_p50_ms)} ms, p99 {_ms(summary.latency_p99_ms)} ms"
    )
    line(
        f"  Projection: {summary.projection_rows} availability rows vs "
        f"{summary.reservations} reservations, {summary.projection_mismatches} mismatches "
        f"[{verdict(summary.projection_ok)}]"
    )
    line(
        "  Warehouse: every committed event loaded exactly once, per-type counts match "
        f"[{verdict(summary.warehouse_ok)}]"
    )
    expected = summary.library_warnings - len(summary.unexpected_warnings)
    if expected:
        line(
            f"  ({expected} expected library warnings about the failing events were "
            "logged; configure logging to see them)"
        )
    if summary.unexpected_warnings:
        line(f"  Other library warnings ({len(summary.unexpected_warnings)}):")
        for message in summary.unexpected_warnings[:10]:
            line(f"    {message[:200]}")
    line("All checks passed." if summary.ok else "Some checks FAILED: see above.")
