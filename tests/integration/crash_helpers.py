"""Crashing a test cluster of one's own: SIGKILL of a backend, then waiting for recovery."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator

import asyncpg

from dispatch_aio import migrate
from dispatch_aio._embedded import EmbeddedPostgres

from .helpers import eventually, uid


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
    """SIGKILL one backend: the postmaster ends every connection and recovers.

    Returns once the postmaster has ended another connection (one opened before the
    kill), so that whatever connects next meets the recovering server, not the old one.
    """
    witness = await asyncpg.connect(dsn)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            os.kill(await conn.fetchval("SELECT pg_backend_pid()"), signal.SIGKILL)
        finally:
            conn.terminate()
        await eventually(
            witness.is_closed, within=30, what="the postmaster to end every connection"
        )
    finally:
        witness.terminate()


@contextlib.asynccontextmanager
async def migrated_database(
    server: EmbeddedPostgres, prefix: str, setup: str | None = None
) -> AsyncIterator[str]:
    """A new database on ``server``, migrated (then ``setup`` run in it); its DSN. Dropped
    afterwards, once the server is up again after whatever crash the test caused."""
    admin = await asyncpg.connect(server.dsn())
    name = f"{prefix}_{uid('db').split('_')[1].replace('-', '')}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = server.dsn(name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        if setup is not None:
            await conn.execute(setup)
    finally:
        await conn.close()
    yield dsn
    await until_up(server.dsn())
    admin = await asyncpg.connect(server.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
