"""What ``benchmarks/scale.py`` and its baseline (``_scale_raw.py``) measure with.

The effects table every drain writes and its check; the CPU of a process; and the span of
a drain read from commit timestamps (the server runs with ``track_commit_timestamp``), so
that a drain ends when its last outcome committed, not when a poll next looked.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

__all__ = [
    "EFFECTS_DDL",
    "SERVER_SETTINGS",
    "check_effects",
    "commit_span",
    "cpu_seconds",
    "server_pids",
]

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


async def commit_span(conn: asyncpg.Connection, started: str, ended: str) -> float:
    """Seconds from the commit of the transaction that wrote the rows of query
    ``started`` (one transaction: the backlog) to the last commit of those of ``ended``
    (the outcomes). Each query selects ``xmin`` of its rows."""
    seconds = await conn.fetchval(
        f"SELECT extract(epoch FROM (SELECT max(pg_xact_commit_timestamp(xmin)) FROM ({ended}) e)"
        f" - (SELECT min(pg_xact_commit_timestamp(xmin)) FROM ({started}) s))"
    )
    if seconds is None:
        raise RuntimeError("no commit timestamps: is track_commit_timestamp on?")
    return float(seconds)


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
