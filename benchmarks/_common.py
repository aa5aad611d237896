"""Shared set-up of the benchmarks: a durable throwaway PostgreSQL, pools and bulk loads.

Every figure is measured against a server started here with ``fsync=on`` (commits wait
for the disk, as in production). Loads are fast but honest: events are valid envelopes
with valid payloads, and their transaction ids and positions come from the table's
insert trigger (``publish_many`` for the measured backlogs, ``COPY`` for the large
historical table: PostgreSQL fires row triggers for ``COPY`` too).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import uuid_utils

from dispatch_aio import Dispatcher, Registry, migrate
from dispatch_aio.testing import EmbeddedPostgres

__all__ = [
    "ACTOR",
    "PRODUCER",
    "TENANT",
    "BenchServer",
    "PayloadFactory",
    "backlog_specs",
    "copy_history",
    "dispatcher",
    "machine_summary",
    "open_pool",
    "percentile",
    "publish_backlog",
    "set_cursor",
    "set_cursor_past_everything",
    "settle",
    "subjects",
    "wait_until",
]

PRODUCER = "revenue"
TENANT = "tnt_bench"
ACTOR = "system:revenue"

# Envelope columns COPY fills; the trigger sets xid and position.
_COPY_COLUMNS = (
    "event_id",
    "event_type",
    "schema_version",
    "tenant_id",
    "producer",
    "subject",
    "actor",
    "occurred_at",
    "payload",
)

_PREFIXED_UUID = re.compile(
    r"^([a-z]{2,8})_[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)


def uuid7() -> str:
    return str(uuid_utils.uuid7())


def subjects(count: int, prefix: str = "per") -> list[str]:
    """``count`` distinct subject ids (``per_<UUIDv7>``)."""
    return [f"{prefix}_{uuid7()}" for _ in range(count)]


class PayloadFactory:
    """Valid, varied payloads built fast from the registry's example of each type.

    Every prefixed id in the example is replaced by a fresh one (``person_id`` by the
    event's subject); the rest of the example is kept. The first payloads of each
    type are checked against the registry, so a drift in the contracts fails loudly.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry.load()
        self._templates: dict[str, tuple[int, list[str], list[str | None]]] = {}
        self._checked: dict[str, int] = {}

    def _template(self, event_type: str) -> tuple[int, list[str], list[str | None]]:
        cached = self._templates.get(event_type)
        if cached is not None:
            return cached
        version = self.registry.current_version(event_type)
        example = dict(self.registry.example_payload(event_type, version))
        slots: list[str | None] = []  # None: the subject; else a prefix for a fresh id
        for key, value in example.items():
            match = _PREFIXED_UUID.match(value) if isinstance(value, str) else None
            if match is None:
                continue
            example[key] = f"@@slot{len(slots)}@@"
            slots.append(None if key == "person_id" else match.group(1))
        encoded = json.dumps(example, separators=(",", ":"))
        parts = re.split(r"@@slot\d+@@", encoded)
        cached = self._templates[event_type] = (version, parts, slots)
        return cached

    def make(self, event_type: str, subject: str) -> tuple[int, str]:
        """(schema version, payload as JSON text) for one event."""
        version, parts, slots = self._template(event_type)
        pieces = [parts[0]]
        for slot, tail in zip(slots, parts[1:], strict=True):
            pieces.append(subject if slot is None else f"{slot}_{uuid7()}")
            pieces.append(tail)
        text = "".join(pieces)
        if self._checked.get(event_type, 0) < 3:
            self._checked[event_type] = self._checked.get(event_type, 0) + 1
            self.registry.validate_payload(event_type, version, json.loads(text))
        return version, text


def _check_envelope(registry: Registry, row: Sequence[Any]) -> None:
    """Validate one COPY row as an envelope (the loader checks a sample)."""
    event_id, event_type, version, tenant, producer, subject, actor, occurred_at, payload = row
    registry.validate_envelope(
        {
            "event_id": event_id,
            "event_type": event_type,
            "schema_version": version,
            "occurred_at": occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "tenant_id": tenant,
            "producer": producer,
            "subject": subject,
            "actor": actor,
            "payload": json.loads(payload),
        }
    )


# -- server and pools -----------------------------------------------------------------


@dataclass
class BenchServer:
    """One embedded PostgreSQL with ``fsync=on``; hands out fresh databases and pools."""

    embedded: EmbeddedPostgres

    @classmethod
    def start(cls, settings: dict[str, str] | None = None) -> BenchServer:
        """Start the server, with ``settings`` beyond the common ones."""
        embedded = EmbeddedPostgres(
            fsync=True,
            settings={
                # COPY of big chunks takes one advisory lock per distinct subject and chunk.
                "max_locks_per_transaction": "256",
                # Maintenance runs between measurements (settle), not in the middle of one.
                "autovacuum": "off",
                "log_min_messages": "warning",
                **(settings or {}),
            },
        )
        embedded.start()
        return cls(embedded)

    def stop(self) -> None:
        self.embedded.stop()

    def dsn(self, database: str = "postgres") -> str:
        parts = urlsplit(self.embedded.dsn())
        return urlunsplit(parts._replace(path="/" + database))

    async def create_database(self, name: str, *, dispatch_schema: bool = True) -> str:
        """Create database ``name`` (migrated for dispatch-aio unless told not to)."""
        admin = await asyncpg.connect(self.dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        if dispatch_schema:
            conn = await asyncpg.connect(self.dsn(name))
            try:
                await migrate(conn)
            finally:
                await conn.close()
        return self.dsn(name)

    async def server_version(self) -> str:
        conn = await asyncpg.connect(self.dsn())
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()


async def open_pool(dsn: str, size: int) -> asyncpg.Pool:
    """A pool of exactly ``size`` connections, all opened up front."""
    pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
    assert pool is not None
    return pool


async def settle(db: str | asyncpg.Pool, *tables: str) -> None:
    """VACUUM ANALYZE the tables, then CHECKPOINT: no maintenance runs mid-measurement.

    ``db`` is a DSN or a pool.
    """
    conn = await asyncpg.connect(db) if isinstance(db, str) else await db.acquire()
    try:
        for table in tables:
            await conn.execute(f"VACUUM (ANALYZE) {table}")
        await conn.execute("CHECKPOINT")
    finally:
        if isinstance(db, str):
            await conn.close()
        else:
            await db.release(conn)


# -- loading ----------------------------------------------------------------------------


def dispatcher(pool: asyncpg.Pool | None) -> Dispatcher:
    return Dispatcher(pool, producer=PRODUCER, tenant_id=TENANT)


def backlog_specs(
    count: int, subject_ids: Sequence[str], event_type: str, factory: PayloadFactory, seed: int
) -> list[dict[str, Any]]:
    """``count`` events spread at random over ``subject_ids`` (publish_many's dicts)."""
    rng = random.Random(seed)
    specs: list[dict[str, Any]] = []
    for _ in range(count):
        subject = rng.choice(subject_ids)
        _, payload = factory.make(event_type, subject)
        specs.append(
            {
                "event_type": event_type,
                "payload": json.loads(payload),
                "subject": subject,
                "actor": ACTOR,
            }
        )
    return specs


async def publish_backlog(
    pool: asyncpg.Pool, specs: Sequence[dict[str, Any]], *, chunk: int = 1000
) -> None:
    """Publish with ``Dispatcher.publish_many``, one transaction per ``chunk`` events."""
    publisher = dispatcher(pool)
    for start in range(0, len(specs), chunk):
        async with pool.acquire() as conn, conn.transaction():
            await publisher.publish_many(specs[start : start + chunk], conn=conn)  # type: ignore[arg-type]


def _history_rows(
    count: int,
    types: Sequence[tuple[str, float]],
    subject_window: Callable[[int], Sequence[str]],
    factory: PayloadFactory,
    chunk: int,
    seed: int,
) -> Iterator[list[tuple[Any, ...]]]:
    rng = random.Random(seed)
    names = [t for t, _ in types]
    weights = [w for _, w in types]
    start = datetime.now(UTC) - timedelta(days=365)
    for index, begin in enumerate(range(0, count, chunk)):
        window = subject_window(index)
        occurred = start + timedelta(minutes=index)
        size = min(chunk, count - begin)
        chosen_types = rng.choices(names, weights, k=size)
        chosen_subjects = rng.choices(window, k=size)
        rows: list[tuple[Any, ...]] = []
        make = factory.make
        for event_type, subject in zip(chosen_types, chosen_subjects, strict=True):
            version, payload = make(event_type, subject)
            rows.append(
                (
                    f"evt_{uuid7()}",
                    event_type,
                    version,
                    TENANT,
                    PRODUCER,
                    subject,
                    ACTOR,
                    occurred,
                    payload,
                )
            )
        yield rows


async def copy_history(
    pool: asyncpg.Pool,
    count: int,
    *,
    types: Sequence[tuple[str, float]],
    hot_subjects: Sequence[str],
    factory: PayloadFactory,
    chunk: int = 50_000,
    window: int = 5_000,
    seed: int = 7,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Load ``count`` old events with ``COPY`` (one transaction per chunk).

    Each chunk's events belong to a window of ``window`` subjects of their own plus a
    tenth drawn from ``hot_subjects`` (the subjects of the measured backlog, so they
    have a long history). Chunks are generated while the previous one is copied.
    """
    rng = random.Random(seed)

    def subject_window(index: int) -> list[str]:
        own = subjects(window)
        return own * 9 + rng.sample(list(hot_subjects), min(len(hot_subjects), window))

    generator = _history_rows(count, types, subject_window, factory, chunk, seed)
    loop = asyncio.get_running_loop()
    registry = factory.registry

    def next_chunk() -> list[tuple[Any, ...]] | None:
        return next(generator, None)

    pending = loop.run_in_executor(None, next_chunk)
    loaded = 0
    while True:
        rows = await pending
        if rows is None:
            break
        pending = loop.run_in_executor(None, next_chunk)
        for sample in (rows[0], rows[-1]):
            _check_envelope(registry, sample)
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(
                "dispatcher_event", records=rows, columns=list(_COPY_COLUMNS)
            )
        loaded += len(rows)
        if progress is not None:
            progress(loaded)


async def set_cursor_past_everything(
    conn: asyncpg.Connection, consumer: str, event_types: Sequence[str]
) -> tuple[int, int]:
    """Put ``consumer``'s cursors after the last stored event; return that (xid, position).

    As if the consumer had handled the whole history already.
    """
    row = await conn.fetchrow(
        "SELECT xid::text::bigint AS xid, position FROM dispatcher_event "
        "ORDER BY xid DESC, position DESC LIMIT 1"
    )
    assert row is not None
    await set_cursor(conn, consumer, event_types, (row["xid"], row["position"]))
    return row["xid"], row["position"]


async def set_cursor(
    conn: asyncpg.Connection, consumer: str, event_types: Sequence[str], at: tuple[int, int]
) -> None:
    await conn.execute(
        "INSERT INTO dispatcher_cursor (consumer, event_type, last_xid, last_position) "
        "SELECT $1, t, $2::text::xid8, $3 FROM unnest($4::text[]) AS t "
        "ON CONFLICT (consumer, event_type) DO UPDATE "
        "SET last_xid = EXCLUDED.last_xid, last_position = EXCLUDED.last_position",
        consumer,
        str(at[0]),
        at[1],
        list(event_types),
    )


# -- measuring ---------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def wait_until(done: Callable[[], bool], *, within: float, interval: float = 0.002) -> float:
    """Poll ``done`` until true; return ``time.perf_counter()`` at that moment."""
    deadline = time.perf_counter() + within
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not done after {within:.0f}s")
        await asyncio.sleep(interval)
    return time.perf_counter()


def machine_summary() -> str:
    loop = type(asyncio.get_event_loop_policy()).__name__
    return (
        f"python {platform.python_version()}, {os.cpu_count()} cpu, "
        f"asyncpg {asyncpg.__version__}, loop policy {loop}"
    )
