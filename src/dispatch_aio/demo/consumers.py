"""The consumers: Coaching's projection and the warehouse that rejects a few events."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import asyncpg

from .._consumer import Consumer
from .._envelope import Event
from .._identifiers import quote_ident
from .._registry import Registry
from .database import _WAREHOUSE_LOAD
from .domain import _RETRY_DELAYS, COACHING, EVENT_TYPES, WAREHOUSE

# -- the consumers -------------------------------------------------------------------


class WarehouseLoadError(Exception):
    """The warehouse's (simulated) loader rejects an event until the demo fixes it."""


@dataclass
class _Observed:
    """What the demo's handlers saw, for the summary and the checks."""

    #: consumer -> event_id -> ms from occurred_at to the first handler start.
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Warehouse: how often its handler ran per event, rolled-back runs included (at
    #: least once each: what was *loaded* is read from its table, see summary.py).
    warehouse_runs: Counter[str] = field(default_factory=Counter)
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
    """The warehouse's consumer: loads each event; fails for ``poisoned`` until fixed.

    A load is a row written through the handler's connection, so it commits with the
    event's outcome, exactly once: a run whose group rolls back (another event of the
    group failed) or whose outcome another run recorded first (a replay read twice)
    leaves no load. A count kept in memory would count those runs too.
    """
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
    insert = _WAREHOUSE_LOAD.format(table=f"{quote_ident(schema)}.warehouse_load")

    async def load(event: Event, conn: asyncpg.Connection) -> None:
        observed.started(WAREHOUSE, event)
        observed.warehouse_runs[event.event_id] += 1
        if event.event_id in poisoned and not observed.warehouse_fixed:
            raise WarehouseLoadError(
                f"loader rejected {event.event_type} {event.event_id}: "
                "column lesson_id is too narrow"
            )
        await conn.execute(insert, event.event_id, event.event_type)

    for event_type in EVENT_TYPES:
        consumer.on(event_type)(load)
    return consumer
