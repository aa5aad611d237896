"""The demo's database: an embedded server, or a fresh schema on a given DSN."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from .._dsn import redact
from .._embedded import EmbeddedPostgres
from .._pool import open_pool
from .output import _Progress

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
                progress.line(f"Kept schema {db.schema} on {redact(dsn, dsn)}")
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
    return await open_pool(dsn, min_size=2, max_size=size, command_timeout=60)


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
CREATE TABLE {schema}.warehouse_load (
    event_id         text        PRIMARY KEY,
    event_type       text        NOT NULL,
    loads            integer     NOT NULL DEFAULT 1,
    loaded_at        timestamptz NOT NULL DEFAULT now()
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

#: One row per committed load; a load committed again would count up ``loads``.
_WAREHOUSE_LOAD = """
INSERT INTO {table} AS w (event_id, event_type) VALUES ($1, $2)
ON CONFLICT (event_id) DO UPDATE SET loads = w.loads + 1, loaded_at = now()
"""

#: Revenue's committed events against the warehouse's committed loads: a row per event
#: in either (``event_id`` NULL on the side that lacks it).
_WAREHOUSE_CHECK = """
SELECT coalesce(e.event_type, w.event_type) AS event_type,
       e.event_id AS published, w.event_id AS loaded, w.loads
FROM (SELECT event_id, event_type FROM {schema}.dispatcher_event WHERE producer = $1) e
FULL JOIN {schema}.warehouse_load w ON w.event_id = e.event_id
"""
