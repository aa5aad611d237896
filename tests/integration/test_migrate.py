"""Migrations: fresh install, idempotence, concurrency, schema checks."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from dispatch_aio import (
    InvalidIdentifierError,
    SchemaNotMigratedError,
    check_schema,
    migrate,
)
from dispatch_aio._sql import migrations
from dispatch_aio.pytest_plugin import TestPostgres

pytestmark = pytest.mark.anyio

TABLES = {"dispatcher_event", "dispatcher_cursor", "dispatcher_dedup", "dispatcher_dead_letter"}
#: Versions are ordered, not necessarily contiguous (branches number theirs apart).
VERSIONS = tuple(m.version for m in migrations())


async def _tables(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    return {r["table_name"] for r in rows}


async def _schema_fingerprint(conn: asyncpg.Connection, schema: str) -> list[tuple[str, ...]]:
    cols = await conn.fetch(
        """SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
           FROM information_schema.columns WHERE table_schema = $1
           ORDER BY table_name, column_name""",
        schema,
    )
    idx = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
        schema,
    )
    trg = await conn.fetch(
        """SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND NOT t.tgisinternal ORDER BY tgname""",
        schema,
    )
    return [tuple(r) for r in cols] + [tuple(r) for r in idx] + [tuple(r) for r in trg]


@pytest.fixture
async def empty_db(dispatch_postgres: TestPostgres) -> str:
    name = await dispatch_postgres.create_database(migrated=False)
    yield dispatch_postgres.dsn(name)
    await dispatch_postgres.drop_database(name)


async def test_fresh_install_creates_tables_and_is_idempotent(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        with pytest.raises(SchemaNotMigratedError, match="dispatch-aio migrate"):
            await check_schema(conn, "app_events")
        first = await migrate(conn, "app_events")
        assert first.applied == VERSIONS
        assert await _tables(conn, "app_events") >= TABLES
        before = await _schema_fingerprint(conn, "app_events")
        second = await migrate(conn, "app_events")
        assert second.applied == ()
        assert await _schema_fingerprint(conn, "app_events") == before
        await check_schema(conn, "app_events")
    finally:
        await conn.close()


async def test_two_concurrent_migrations_end_in_one_schema(empty_db: str) -> None:
    conns = [await asyncpg.connect(empty_db) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, "shared") for c in conns))
        applied = [r.applied for r in results]
        assert sorted(applied, key=len)[-1] == VERSIONS
        assert sum(1 for a in applied if a) == 1
        rows = await conns[0].fetch('SELECT version FROM "shared".dispatcher_migration')
        assert tuple(r["version"] for r in rows) == VERSIONS
    finally:
        for c in conns:
            await c.close()


async def test_poll_only_mode_drops_and_restores_trigger(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate(conn, notify=False)
        has = "SELECT count(*) FROM pg_trigger WHERE tgname = 'dispatcher_event_notify'"
        assert await conn.fetchval(has) == 0
        await migrate(conn, notify=True)
        assert await conn.fetchval(has) == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("bad", ['evil"; drop table x; --', "", "1abc", "a" * 64, "with space"])
async def test_bad_schema_names_are_refused_before_any_sql(empty_db: str, bad: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        with pytest.raises(InvalidIdentifierError):
            await migrate(conn, bad)
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname NOT LIKE 'pg_%'"
            " AND nspname NOT IN ('information_schema', 'public')"
        )
        assert count == 0
    finally:
        await conn.close()
