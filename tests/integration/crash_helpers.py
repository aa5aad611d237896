"""Crashing a test cluster of one's own: SIGKILL of a backend, then waiting for recovery."""

from __future__ import annotations

import os
import signal

import asyncpg

from .helpers import eventually


async def until_up(dsn: str, within: float = 60) -> None:
    """Wait until the server accepts connections again."""

    async def up() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        await conn.close()
        return True

    await eventually(up, within=within, what="the server to accept connections", every=0.1)


async def crash(dsn: str) -> None:
    """SIGKILL one backend: the postmaster ends every connection and recovers."""
    conn = await asyncpg.connect(dsn)
    try:
        os.kill(await conn.fetchval("SELECT pg_backend_pid()"), signal.SIGKILL)
    finally:
        conn.terminate()
