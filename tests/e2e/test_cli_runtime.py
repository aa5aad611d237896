"""``dispatch-aio status``, ``worker`` and ``demo`` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import anyio
import asyncpg
import pytest

from dispatch_aio import Dispatcher

from ..integration.helpers import locked_payload, uid
from .test_cli_base import UNREACHABLE, assert_error, cli

pytestmark = pytest.mark.anyio


async def test_status_lists_consumers_as_json_and_table(
    dispatch_dsn: str, dispatch_pool: asyncpg.Pool
) -> None:
    await dispatch_pool.execute(
        "INSERT INTO dispatcher_cursor (consumer, event_type) VALUES ('coaching', 'credit.locked')"
    )
    table = await cli("status", dsn=dispatch_dsn)
    assert table.code == 0, table
    assert "coaching" in table.out
    assert "credit.locked" in table.out
    machine = await cli("status", "--json", dsn=dispatch_dsn)
    assert machine.code == 0, machine
    report = json.loads(machine.out)
    assert [c["consumer"] for c in report["consumers"]] == ["coaching"]


async def test_status_without_a_database_prints_one_line() -> None:
    assert_error(await cli("status", dsn=UNREACHABLE), 1, "cannot reach the database")


WORKER_MODULE = textwrap.dedent(
    """
    import asyncpg
    from dispatch_aio import Consumer, Event

    def make(pool):
        consumer = Consumer(pool, name="projector", poll_interval=0.2, concurrency=2)

        @consumer.on("credit.locked")
        async def project(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)
            await conn.execute("SELECT pg_notify('effects', $1)", event.event_id)

        return consumer
    """
)


async def test_worker_runs_a_consumer_until_sigterm(
    dispatch_dsn: str, dispatch_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await dispatch_pool.execute("CREATE TABLE effects (event_id text PRIMARY KEY)")
    (tmp_path / "shop_worker.py").write_text(WORKER_MODULE)
    dispatcher = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_tests")
    for _ in range(5):
        await dispatcher.publish(
            "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
        )
    handled: set[str] = set()
    all_handled = anyio.Event()

    def on_effect(*args: object) -> None:
        handled.add(str(args[-1]))
        if len(handled) == 5:
            all_handled.set()

    listener = await asyncpg.connect(dispatch_dsn)
    await listener.add_listener("effects", on_effect)
    # The worker module first, then whatever the run itself imports dispatch_aio from.
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "DATABASE_URL": dispatch_dsn, "PYTHONPATH": path}
    command = [sys.executable, "-m", "dispatch_aio.cli", "worker", "shop_worker:make"]
    process = await anyio.open_process(command, env=env, cwd=tmp_path)
    try:
        with anyio.fail_after(30):
            await all_handled.wait()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            code = await process.wait()
    finally:
        await listener.close()
        if process.returncode is None:
            process.kill()
    assert code == 0
    assert await dispatch_pool.fetchval("SELECT count(*) FROM effects") == 5
    assert process.stderr is not None
    log = (await process.stderr.receive()).decode()
    assert "consumer started" in log


async def test_worker_with_an_unknown_module_is_a_usage_error(dispatch_dsn: str) -> None:
    assert_error(
        await cli("worker", "no_such_module_here:consumer", dsn=dispatch_dsn), 2, "cannot import"
    )


async def test_demo_runs_to_its_summary_on_the_embedded_postgres() -> None:
    run = await cli("demo", "--events", "40")
    assert run.code == 0, run.out + run.err
    assert "Projection:" in run.out
    assert "All checks passed." in run.out


async def test_demo_with_a_dead_dsn_prints_one_line() -> None:
    assert_error(await cli("demo", "--dsn", UNREACHABLE), 1, "cannot reach the database")


async def test_prune_deletes_old_events_every_consumer_passed(
    dispatch_dsn: str, dispatch_pool: asyncpg.Pool
) -> None:
    dispatcher = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_tests")
    await dispatcher.publish("credit.locked", locked_payload(), subject=uid("per"), actor="a:b")
    run = await cli("prune", "--older-than", "0s", dsn=dispatch_dsn)
    assert run.code == 0, run
    assert "deleted 1 events" in run.out
    assert await dispatch_pool.fetchval("SELECT count(*) FROM dispatcher_event") == 0


async def test_prune_with_a_malformed_age_is_a_usage_error(dispatch_dsn: str) -> None:
    run = await cli("prune", "--older-than", "a month", dsn=dispatch_dsn)
    assert run.code == 2
    assert "is not a duration" in run.err
    assert "Traceback" not in run.err
