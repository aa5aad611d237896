"""pytest fixtures for code that publishes or consumes dispatch-aio events.

Installed with the package (entry point ``pytest11``); the fixtures cost nothing until a
test asks for them:

``dispatch_postgres``  (session) a throwaway PostgreSQL: the embedded wheel, or the
                       server named by ``DISPATCH_AIO_TEST_DSN``.
``dispatch_dsn``       a DSN to a fresh database, migrated, cloned per test from a
                       template database migrated once per session.
``dispatch_pool``      an asyncpg pool on that database.
``dispatcher``         a :class:`~dispatch_aio.Dispatcher` on that pool
                       (producer ``tests``, tenant ``tnt_tests``).

Async fixtures run on anyio's pytest plugin with the asyncio backend (asyncpg does not
run on trio): mark tests with ``@pytest.mark.anyio``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ._embedded import EmbeddedPostgres
from ._migrate import migrate

__all__ = ["TestPostgres"]

_TEMPLATE = "dispatch_aio_template"


class TestPostgres:
    """A PostgreSQL server for a test session: hands out fresh migrated databases."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, server_dsn: str, embedded: EmbeddedPostgres | None = None) -> None:
        self.server_dsn = server_dsn
        self.embedded = embedded
        self._counter = itertools.count()
        self._template_ready = False
        self._prefix = f"dispatch_aio_t{os.getpid()}_"

    def dsn(self, database: str) -> str:
        """The server DSN pointed at ``database``."""
        parts = urlsplit(self.server_dsn)
        return urlunsplit(parts._replace(path="/" + database))

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn("postgres"))

    async def ensure_template(self) -> None:
        """Create and migrate the template database once per session."""
        if self._template_ready:
            return
        admin = await self._admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{_TEMPLATE}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.dsn(_TEMPLATE))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        self._template_ready = True

    async def create_database(self, *, migrated: bool = True) -> str:
        """Create a new database (a clone of the migrated template); return its name."""
        if migrated:
            await self.ensure_template()
        name = f"{self._prefix}{next(self._counter)}"
        admin = await self._admin()
        try:
            template = f' TEMPLATE "{_TEMPLATE}"' if migrated else ""
            await admin.execute(f'CREATE DATABASE "{name}"{template}')
        finally:
            await admin.close()
        return name

    async def drop_database(self, name: str) -> None:
        """Drop a database made by :meth:`create_database`, ending its sessions."""
        admin = await self._admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
def dispatch_postgres() -> Iterator[TestPostgres]:
    """A PostgreSQL server for the whole session, removed at the end."""
    external = os.environ.get("DISPATCH_AIO_TEST_DSN")
    if external:
        yield TestPostgres(external)
        return
    with EmbeddedPostgres(fsync=False) as server:
        yield TestPostgres(server.dsn(), server)


@pytest.fixture
async def dispatch_dsn(dispatch_postgres: TestPostgres) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database, dropped after the test."""
    name = await dispatch_postgres.create_database()
    try:
        yield dispatch_postgres.dsn(name)
    finally:
        await dispatch_postgres.drop_database(name)


@pytest.fixture
async def dispatch_pool(dispatch_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool (2 to 20 connections) on the test's database."""
    pool = await asyncpg.create_pool(dispatch_dsn, min_size=2, max_size=20)
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)


@pytest.fixture
def dispatcher(dispatch_pool: asyncpg.Pool) -> Any:
    """A Dispatcher on ``dispatch_pool`` with producer ``tests`` and tenant ``tnt_tests``."""
    from ._dispatcher import Dispatcher

    return Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_tests")


@pytest.fixture(scope="session")
def dispatch_registry() -> Any:
    """The contract registry (bundled, or ``DISPATCH_AIO_CONTRACTS``), loaded once per session.

    Pass it as ``registry=`` to the Dispatchers and Consumers a test builds, so that they
    do not load and compile the contracts again.
    """
    from ._registry import Registry

    return Registry.load()
