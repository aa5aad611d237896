"""The documented PgBouncer set-up (docs/operations.md) against a real PgBouncer.

Transaction pooling: ``dispatch-aio migrate --no-notify``, producers and a poll-only
consumer through PgBouncer, and a dead-letter replay picked up through it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import pytest

from dispatch_aio import Consumer, DeadLetters, Dispatcher, Event
from dispatch_aio.pytest_plugin import TestPostgres

from .helpers import eventually, locked_payload, uid

pytestmark = pytest.mark.anyio

HOW_TO_GET_IT = (
    "pgbouncer is not installed: apt-get update && apt-get install -y pgbouncer "
    "(.ci/run installs it where it is missing)"
)


def _pgbouncer() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if found is None:
        pytest.fail(HOW_TO_GET_IT)
    return found


def _server(postgres: TestPostgres) -> tuple[str, int]:
    """Where PgBouncer forwards to: the server's unix socket directory (or host) and port."""
    if postgres.embedded is not None:
        return str(postgres.embedded.socket_dir), postgres.embedded.port
    parts = urlsplit(postgres.server_dsn)
    query = parse_qs(parts.query)
    host = unquote(query["host"][0]) if "host" in query else (parts.hostname or "localhost")
    port = int(query["port"][0]) if "port" in query else (parts.port or 5432)
    return host, port


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(database: str, host: str, server_port: int, port: int) -> Path:
    """PgBouncer's directory: its config, users and log, in transaction pooling."""
    # Not under pytest's tmp_path: PgBouncer runs as another user, who must reach it.
    work = Path(tempfile.mkdtemp(prefix="dispatch-aio-pgbouncer-"))
    work.chmod(0o777)
    (work / "users.txt").write_text('"postgres" ""\n')
    (work / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{database} = host={host} port={server_port} dbname={database}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        f"unix_socket_dir = {work}\n"
        "auth_type = trust\n"
        f"auth_file = {work / 'users.txt'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 10\n"
        "max_client_conn = 100\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {work / 'pgbouncer.log'}\n"
    )
    for path in work.iterdir():
        path.chmod(0o644)
    return work


@pytest.fixture
async def bouncer_dsn(dispatch_postgres: TestPostgres) -> AsyncIterator[tuple[str, str]]:
    """(DSN through PgBouncer in transaction pooling, direct DSN) to a fresh database."""
    binary = _pgbouncer()
    database = await dispatch_postgres.create_database(migrated=False)
    host, server_port = _server(dispatch_postgres)
    port = _free_port()
    work = _write_config(database, host, server_port, port)
    # PgBouncer refuses to run as root: -u drops to an unprivileged user.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = await asyncio.create_subprocess_exec(
        binary,
        *user,
        str(work / "pgbouncer.ini"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    dsn = f"postgresql://postgres@127.0.0.1:{port}/{database}"

    async def accepting() -> bool:
        try:
            conn = await asyncpg.connect(dsn, statement_cache_size=0, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        await conn.close()
        return True

    try:
        try:
            await eventually(accepting, within=15, what="pgbouncer to accept", every=0.1)
        except BaseException:
            log = work / "pgbouncer.log"
            print(log.read_text() if log.exists() else "no pgbouncer log")
            raise
        yield dsn, dispatch_postgres.dsn(database)
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        shutil.rmtree(work, ignore_errors=True)
        await dispatch_postgres.drop_database(database)


async def test_the_documented_pgbouncer_setup_delivers_and_replays(
    bouncer_dsn: tuple[str, str],
) -> None:
    dsn, direct = bouncer_dsn
    migrated = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatch_aio.cli",
        "--dsn",
        dsn,
        "migrate",
        "--no-notify",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(migrated.communicate(), 60)
    assert migrated.returncode == 0, (out + err).decode()

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8, statement_cache_size=0)
    try:
        triggers = await pool.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'dispatcher_event_notify'"
        )
        assert triggers == 0
        dispatcher = Dispatcher(pool, producer="tests", tenant_id="tnt_tests")
        broken_subject = uid("per")
        broken = {"yes": True}
        handled: list[str] = []
        consumer = Consumer(
            pool,
            name="bounced",
            listen=False,
            poll_interval=0.1,
            concurrency=4,
            retry_delays=(),
        )

        @consumer.on("credit.locked")
        async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT 1")
            if event.subject == broken_subject and broken["yes"]:
                raise RuntimeError("not yet")
            handled.append(event.event_id)

        async def produce(n: int) -> list[str]:
            return [
                (
                    await dispatcher.publish(
                        "credit.locked", locked_payload(), subject=uid("per"), actor="system:t"
                    )
                ).event_id
                for _ in range(n)
            ]

        async with consumer:
            published = [
                e for batch in await asyncio.gather(*(produce(20) for _ in range(4))) for e in batch
            ]
            poisoned = (
                await dispatcher.publish(
                    "credit.locked", locked_payload(), subject=broken_subject, actor="system:t"
                )
            ).event_id
            await eventually(
                lambda: set(published) <= set(handled) and consumer.stats.dead_lettered == 1,
                within=30,
                what="every event through pgbouncer",
            )
            dead_letters = DeadLetters(pool)
            [letter] = (await dead_letters.list("bounced")).items
            assert letter.event_id == poisoned
            broken["yes"] = False
            await dead_letters.replay(letter.dead_letter_id, replayed_by="ops")

            async def replayed() -> bool:
                row = await dead_letters.get(letter.dead_letter_id)
                return row.replay_status == "succeeded"

            await eventually(replayed, within=15, what="the replay through pgbouncer")
        # A handler may run again when its group rolls back (the poisoned event shares
        # groups); exactly-once is what commits: one marker per event, below.
        assert set(handled) == {*published, poisoned}
    finally:
        await asyncio.wait_for(pool.close(), 10)
    # The direct connection sees the same: every event has exactly one marker.
    conn = await asyncpg.connect(direct)
    try:
        markers = await conn.fetchval(
            "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'bounced'"
        )
        events = await conn.fetchval("SELECT count(*) FROM dispatcher_event")
        assert markers == events == len(published) + 1
    finally:
        await conn.close()
