"""Schema migrations: ordered files from ``sql/migrations``, applied by ``migrate``.

Migrations never run implicitly. ``migrate`` takes an advisory lock inside one
transaction, so two processes migrating at once end with one correct schema, and a
second run is a no-op. The runtime calls :func:`check_schema` at start.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ._errors import ConfigurationError, SchemaNotMigratedError
from ._identifiers import validate_schema_name
from ._sql import migrations, queries

__all__ = ["SCHEMA_VERSION", "MigrationResult", "check_schema", "migrate"]


def _latest() -> int:
    return migrations()[-1].version


#: The schema version this code needs.
SCHEMA_VERSION = _latest()


@dataclass(frozen=True)
class MigrationResult:
    """What a ``migrate`` call did."""

    schema: str
    applied: tuple[int, ...]
    version: int
    notify: bool


async def migrate(
    db: asyncpg.Pool | asyncpg.Connection,
    schema: str = "public",
    *,
    notify: bool = True,
) -> MigrationResult:
    """Bring ``schema`` up to date; idempotent and safe from several processes at once.

    ``notify=False`` removes the NOTIFY trigger (poll-only mode, for PgBouncer in
    transaction pooling); ``notify=True`` puts it back. Runs in its own transaction.
    """
    validate_schema_name(schema)
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _migrate(conn, schema, notify)
    return await _migrate(db, schema, notify)


async def _migrate(conn: asyncpg.Connection, schema: str, notify: bool) -> MigrationResult:
    q = queries(schema)
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute(q.migration_lock)
        await conn.execute(q.create_migration_table)
        done = {row["version"]: row["checksum"] for row in await conn.fetch(q.applied_migrations)}
        for migration in migrations():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise ConfigurationError(
                        f"migration {migration.version:04d}_{migration.name} was applied to "
                        f"schema {schema!r} with a different text; the schema was changed "
                        "by another version of dispatch-aio"
                    )
                continue
            await conn.execute(migration.render(schema))
            await conn.execute(
                q.record_migration, migration.version, migration.name, migration.checksum
            )
            applied.append(migration.version)
        await conn.execute(q.enable_notify if notify else q.disable_notify)
    return MigrationResult(schema, tuple(applied), _latest(), notify)


async def schema_version(conn: asyncpg.Connection, schema: str) -> int:
    """The applied schema version of ``schema`` (0 when never migrated)."""
    q = queries(schema)
    if not await conn.fetchval(q.migration_table_exists, schema):
        return 0
    return int(await conn.fetchval(q.schema_version))


async def check_schema(db: asyncpg.Pool | asyncpg.Connection, schema: str = "public") -> None:
    """Raise SchemaNotMigratedError, naming the command to run, unless ``schema`` is current."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            version = await schema_version(conn, schema)
    else:
        version = await schema_version(db, schema)
    if version < SCHEMA_VERSION:
        option = "" if schema == "public" else f" --schema {schema}"
        argument = "" if schema == "public" else f", schema={schema!r}"
        state = "is not migrated" if version == 0 else f"is at version {version}"
        raise SchemaNotMigratedError(
            f"dispatcher schema {schema!r} {state}; this code needs version {SCHEMA_VERSION}. "
            f"Run: dispatch-aio migrate --dsn <DSN>{option}  (or: await migrate(pool{argument}))"
        )
    if version > SCHEMA_VERSION:
        raise SchemaNotMigratedError(
            f"dispatcher schema {schema!r} is at version {version}, newer than this code "
            f"({SCHEMA_VERSION}); upgrade dispatch-aio"
        )
