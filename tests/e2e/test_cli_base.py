"""``dispatch-aio`` in a subprocess: each command's success and its most likely user error."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import pytest

from dispatch_aio.pytest_plugin import TestPostgres

from ..integration.helpers import seed_dead_letter as seed
from ..integration.helpers import uid as new_id

pytestmark = pytest.mark.anyio

#: A DSN whose server cannot be there: the socket directory does not exist.
UNREACHABLE = "postgresql://postgres@/dispatch?host=/nonexistent/dispatch-aio-socket-dir"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


async def cli(
    *args: str, dsn: str | None = None, script: bool = False, cwd: Path | None = None
) -> Run:
    """Run the command line in a fresh interpreter, with DATABASE_URL set to ``dsn``."""
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DISPATCH_AIO_CONTRACTS"}
    }
    if dsn is not None:
        env["DATABASE_URL"] = dsn
    if script:
        command = [str(Path(sys.executable).with_name("dispatch-aio")), *args]
    else:
        command = [sys.executable, "-m", "dispatch_aio.cli", *args]
    with anyio.fail_after(60):
        done = await anyio.run_process(command, env=env, check=False, cwd=cwd)
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def assert_error(run: Run, code: int, fragment: str) -> None:
    """Exit ``code`` and exactly one readable line on stderr mentioning ``fragment``."""
    assert run.code == code, run
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("error: "), run.err
    assert fragment in lines[0], run.err
    assert "Traceback" not in run.err + run.out


@pytest.fixture
async def conn(dispatch_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dispatch_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def empty_dsn(dispatch_postgres: TestPostgres) -> AsyncIterator[str]:
    name = await dispatch_postgres.create_database(migrated=False)
    try:
        yield dispatch_postgres.dsn(name)
    finally:
        await dispatch_postgres.drop_database(name)


# --------------------------------------------------------------------------- the basics


async def test_help_and_usage_errors() -> None:
    helped = await cli("--help")
    assert helped.code == 0
    for command in ("migrate", "contracts", "dlq"):
        assert command in helped.out
    unknown = await cli("dlq", "frobnicate")
    assert unknown.code == 2
    assert "invalid choice" in unknown.err
    missing = await cli("dlq", "resolve", new_id("dlq"))
    assert missing.code == 2
    assert "--by" in missing.err


async def test_the_installed_script_runs() -> None:
    run = await cli("--version", script=True)
    assert run.code == 0
    assert run.out.startswith("dispatch-aio ")


async def test_works_without_fastapi_installed() -> None:
    # The base install has no FastAPI: make its import fail and run a command.
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "from dispatch_aio.cli import main\n"
        "raise SystemExit(main(['contracts', 'check']))\n"
    )
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-c", code], check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("ok: ")


async def test_no_database_given() -> None:
    assert_error(await cli("dlq", "list", "--consumer", "coaching"), 2, "DATABASE_URL")


async def test_debug_adds_the_traceback() -> None:
    run = await cli("--debug", "dlq", "list", "--consumer", "c", dsn=UNREACHABLE)
    assert run.code == 1
    assert "Traceback" in run.err
    assert run.err.splitlines()[-1].startswith("error: cannot reach the database")


# --------------------------------------------------------------------------- migrate


async def test_migrate_applies_then_is_a_no_op(empty_dsn: str) -> None:
    first = await cli("migrate", dsn=empty_dsn)
    assert first.code == 0, first
    assert "applied 0001_tables" in first.out
    assert "now at version" in first.out
    second = await cli("migrate", dsn=empty_dsn)
    assert second.code == 0, second
    assert "applied" not in second.out
    assert "already at version" in second.out

    # Global options work after the command too.
    poll_only = await cli("migrate", "--no-notify", "--dsn", empty_dsn, "--schema", "ops")
    assert poll_only.code == 0, poll_only
    assert "poll-only" in poll_only.out
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('ops.dispatcher_event') IS NOT NULL")
    finally:
        await conn.close()


async def test_migrate_with_no_database_reachable() -> None:
    assert_error(await cli("migrate", dsn=UNREACHABLE), 1, "cannot reach the database")


@pytest.mark.parametrize(
    "dsn", ["not a dsn", "mysql://db.example/app", "postgresql://h:notaport/db"]
)
async def test_migrate_with_a_bad_dsn(dsn: str) -> None:
    assert_error(await cli("migrate", dsn=dsn), 2, "invalid DSN")


async def test_the_password_is_not_printed() -> None:
    run = await cli("migrate", "--dsn", "postgresql://app:s3cret@127.0.0.1:1/app")
    assert_error(run, 1, "cannot reach the database")
    assert "s3cret" not in run.err


# --------------------------------------------------------------------------- contracts


async def test_contracts_check_of_the_bundled_registry() -> None:
    run = await cli("contracts", "check")
    assert run.code == 0, run
    [line] = run.out.splitlines()
    assert line.startswith("ok: ")
    assert "event types" in line


async def test_contracts_check_lists_every_problem(tmp_path: Path) -> None:
    (tmp_path / "event-types-registry.json").write_text("{ not json")
    run = await cli("contracts", "check", str(tmp_path))
    assert run.code == 1
    problems = run.out.splitlines()
    assert len(problems) >= 2, run  # the unparsable registry and the missing envelope schema
    assert any("event-types-registry.json" in p for p in problems)
    assert any("envelope" in p for p in problems)
    assert_error(run, 1, f"{len(problems)} problem(s)")


async def test_contracts_check_of_a_bad_path(tmp_path: Path) -> None:
    run = await cli("contracts", "check", str(tmp_path / "missing"))
    assert_error(run, 1, "does not exist")
    assert run.out == ""


# --------------------------------------------------------------------------- dlq


async def test_dlq_list_table_json_and_pages(dispatch_dsn: str, conn: asyncpg.Connection) -> None:
    first = await seed(conn)
    second = await seed(conn)
    resolved = await seed(conn, resolved=True)

    table = await cli("dlq", "list", "--consumer", "coaching", dsn=dispatch_dsn)
    assert table.code == 0, table
    lines = table.out.splitlines()
    assert lines[0].split()[:2] == ["ID", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == [second, first]
    assert "ValueError: boom" in table.out

    as_json = await cli(
        "dlq", "list", "--consumer", "coaching", "--include-resolved", "--json", dsn=dispatch_dsn
    )
    assert as_json.code == 0, as_json
    page = json.loads(as_json.out)
    assert [item["dead_letter_id"] for item in page["items"]] == [resolved, second, first]
    assert page["next_cursor"] is None

    paged = await cli("dlq", "list", "--consumer", "coaching", "--limit", "1", dsn=dispatch_dsn)
    cursor = paged.out.splitlines()[-1].removeprefix("more: add --before ")
    rest = await cli(
        "dlq", "list", "--consumer", "coaching", "--before", cursor, "--json", dsn=dispatch_dsn
    )
    assert [item["dead_letter_id"] for item in json.loads(rest.out)["items"]] == [first]

    empty = await cli("dlq", "list", "--consumer", "nobody", dsn=dispatch_dsn)
    assert empty.code == 0
    assert "no active dead letters" in empty.out


async def test_dlq_list_of_every_consumer_tells_replayed_from_resolved(
    dispatch_dsn: str, conn: asyncpg.Connection
) -> None:
    coaching = await seed(conn, consumer="coaching")
    billing = await seed(conn, consumer="billing")
    by_hand = await seed(conn, consumer="coaching", resolved=True)
    replayed = await seed(conn, consumer="billing", resolved=True, replay_status="succeeded")

    every = await cli("dlq", "list", dsn=dispatch_dsn)
    assert every.code == 0, every
    lines = every.out.splitlines()
    assert lines[0].split()[:3] == ["ID", "CONSUMER", "CREATED"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert rows == {coaching: "coaching", billing: "billing"}

    closed = await cli("dlq", "list", "--include-resolved", dsn=dispatch_dsn)
    assert closed.code == 0, closed
    states = {line.split()[0]: line for line in closed.out.splitlines()[1:]}
    assert " replayed " in states[replayed]
    assert " resolved " in states[by_hand]
    assert " active " in states[coaching]

    as_json = await cli("dlq", "list", "--include-resolved", "--json", dsn=dispatch_dsn)
    items = {i["dead_letter_id"]: i for i in json.loads(as_json.out)["items"]}
    assert {k: v["state"] for k, v in items.items()} == {
        coaching: "active",
        billing: "active",
        by_hand: "resolved",
        replayed: "replayed",
    }
    assert items[billing]["consumer"] == "billing"


async def test_dlq_list_errors(dispatch_dsn: str) -> None:
    assert_error(
        await cli("dlq", "list", "--consumer", "coaching", dsn=UNREACHABLE),
        1,
        "cannot reach the database",
    )
    assert_error(
        await cli("dlq", "list", "--consumer", "c", "--schema", "elsewhere", dsn=dispatch_dsn),
        1,
        "dispatch-aio migrate",
    )
    assert_error(
        await cli("dlq", "list", "--consumer", "c", "--limit", "0", dsn=dispatch_dsn), 2, "limit"
    )


async def test_dlq_show(dispatch_dsn: str, conn: asyncpg.Connection) -> None:
    dead_letter_id = await seed(conn)
    shown = await cli("dlq", "show", dead_letter_id, dsn=dispatch_dsn)
    assert shown.code == 0, shown
    assert dead_letter_id in shown.out
    assert "ValueError: boom" in shown.out
    assert '"payload"' in shown.out
    as_json = await cli("dlq", "show", dead_letter_id, "--json", dsn=dispatch_dsn)
    assert json.loads(as_json.out)["envelope"]["payload"] == {"n": 1}

    assert_error(await cli("dlq", "show", new_id("dlq"), dsn=dispatch_dsn), 1, "no dead letter")
    other_tenant = await cli("dlq", "show", dead_letter_id, "--tenant", "tnt_b", dsn=dispatch_dsn)
    assert_error(other_tenant, 1, "no dead letter")
    assert_error(await cli("dlq", "show", "dlq_123", dsn=dispatch_dsn), 2, "not a dead-letter id")


async def test_dlq_resolve(dispatch_dsn: str, conn: asyncpg.Connection) -> None:
    dead_letter_id = await seed(conn)
    run = await cli(
        "dlq", "resolve", dead_letter_id, "--by", "alice", "--note", "fixed", dsn=dispatch_dsn
    )
    assert run.code == 0, run
    assert f"resolved {dead_letter_id}" in run.out
    row = await conn.fetchrow(
        "SELECT resolved_by, resolution_note, resolved_at FROM dispatcher_dead_letter"
        " WHERE dead_letter_id = $1",
        dead_letter_id,
    )
    assert row is not None
    assert (row["resolved_by"], row["resolution_note"]) == ("alice", "fixed")
    assert row["resolved_at"] is not None

    again = await cli("dlq", "resolve", dead_letter_id, "--by", "bob", dsn=dispatch_dsn)
    assert_error(again, 1, "already resolved")
    unknown = await cli("dlq", "resolve", new_id("dlq"), "--by", "bob", dsn=dispatch_dsn)
    assert_error(unknown, 1, "no dead letter")


async def test_dlq_replay(dispatch_dsn: str, conn: asyncpg.Connection) -> None:
    dead_letter_id = await seed(conn)
    run = await cli("dlq", "replay", dead_letter_id, "--by", "alice", dsn=dispatch_dsn)
    assert run.code == 0, run
    assert "replay pending" in run.out
    status = await conn.fetchval(
        "SELECT replay_status FROM dispatcher_dead_letter WHERE dead_letter_id = $1",
        dead_letter_id,
    )
    assert status == "pending"

    resolved = await seed(conn, resolved=True)
    assert_error(
        await cli("dlq", "replay", resolved, "--by", "alice", dsn=dispatch_dsn),
        1,
        "already resolved",
    )
    assert_error(
        await cli("dlq", "replay", new_id("dlq"), "--by", "alice", dsn=dispatch_dsn),
        1,
        "no dead letter",
    )


async def test_dlq_replay_all(dispatch_dsn: str, conn: asyncpg.Connection) -> None:
    for _ in range(2):
        await seed(conn)
    await seed(conn, resolved=True)
    await seed(conn, consumer="warehouse")
    run = await cli(
        "dlq", "replay-all", "--consumer", "coaching", "--by", "alice", dsn=dispatch_dsn
    )
    assert run.code == 0, run
    assert "marked 2 dead letter(s)" in run.out
    pending = await conn.fetchval(
        "SELECT count(*) FROM dispatcher_dead_letter WHERE replay_status = 'pending'"
    )
    assert pending == 2

    assert_error(
        await cli("dlq", "replay-all", "--consumer", "coaching", "--by", "a", dsn=UNREACHABLE),
        1,
        "cannot reach the database",
    )
