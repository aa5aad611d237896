"""What ``benchmarks/scale.py`` and its baseline (``_scale_raw.py``) measure with.

The effects table every drain writes and its check; the CPU of a process; and the span of
a drain read from commit timestamps (the server runs with ``track_commit_timestamp``), so
that a drain ends when its last outcome committed, not when a poll next looked.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

__all__ = [
    "DRAIN_TIMEOUT",
    "EFFECTS_DDL",
    "SERVER_SETTINGS",
    "check_effects",
    "commit_times",
    "cpu_seconds",
    "server_pids",
]

#: Seconds: a drain slower than this is broken, not slow.
DRAIN_TIMEOUT = 600.0
#: The rows of the backlog, published in one transaction (for :func:`commit_times`).
BACKLOG = "SELECT xmin FROM dispatcher_event"

EFFECTS_DDL = (
    "CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL, "
    "subject text NOT NULL, position bigint NOT NULL, pid integer NOT NULL, "
    # When the handler ran (the timeline); a default, so the handler's statement is as before.
    "at timestamptz NOT NULL DEFAULT clock_timestamp())"
)

#: Settings of the benchmark's server beyond ``_common.BenchServer``'s: the commit time
#: of every transaction is kept, and a drain is timed from commit to commit.
SERVER_SETTINGS = {"track_commit_timestamp": "on"}


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` so far, to the nanosecond (0 once it is gone).

    ``/proc/PID/schedstat``, not ``/proc/PID/stat``: the latter counts in clock ticks of
    10 ms, and a server process of a drain uses a few ticks at most, so that summing them
    over 40 processes was off by up to a third.
    """
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


async def server_pids(conn: asyncpg.Connection) -> list[int]:
    """The server processes of the workers' connections (not ours: it publishes)."""
    return [
        r[0]
        for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    ]


async def commit_times(conn: asyncpg.Connection, ended: str) -> tuple[float, float]:
    """When the backlog committed and when the last of the rows of query ``ended`` (the
    outcomes; it selects their ``xmin``) did, in seconds since 1970."""
    started, finished = await conn.fetchrow(
        "SELECT extract(epoch FROM (SELECT min(pg_xact_commit_timestamp(xmin)) "
        f"FROM ({BACKLOG}) s))::float8, "
        "extract(epoch FROM (SELECT max(pg_xact_commit_timestamp(xmin)) "
        f"FROM ({ended}) e))::float8"
    )
    if started is None or finished is None:
        raise RuntimeError("no commit timestamps: is track_commit_timestamp on?")
    return float(started), float(finished)


async def check_effects(conn: asyncpg.Connection, expected: int, label: str) -> None:
    """0 lost, 0 doubled, 0 per-subject inversions, or the run is void."""
    total, distinct = await conn.fetchrow("SELECT count(*), count(DISTINCT event_id) FROM effects")
    inversions = await conn.fetchval(
        "SELECT count(*) FROM (SELECT position, lag(position) OVER (PARTITION BY subject "
        "ORDER BY id) AS before FROM effects) s WHERE before > position"
    )
    if total != expected or distinct != expected or inversions:
        raise AssertionError(
            f"{label}: {total} effects, {distinct} distinct, {inversions} inversions "
            f"for {expected} events"
        )
