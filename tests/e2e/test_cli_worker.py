"""``dispatch-aio worker`` in a subprocess: pool checks, log output, factories."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio import Dispatcher

from ..integration.helpers import eventually, locked_payload, uid
from .test_cli_base import assert_error, cli

pytestmark = pytest.mark.anyio

FAILING_MODULE = textwrap.dedent(
    """
    from dispatch_aio import Consumer, Event

    def make(pool):
        consumer = Consumer(pool, name="ledger", poll_interval=0.2, retry_delays=(0,))

        @consumer.on("credit.locked")
        async def refuse(event: Event) -> None:
            raise LookupError("no ledger row for " + event.subject)

        @consumer.on("credit.released")
        async def accept(event: Event) -> None:
            pass

        return consumer
    """
)


async def _start_worker(
    tmp_path: Path, dsn: str, *args: str, log: str = "worker.log"
) -> tuple[asyncio.subprocess.Process, Path]:
    (tmp_path / "ledger_worker.py").write_text(FAILING_MODULE)
    paths = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("DISPATCH_AIO_CONTRACTS", None)
    path = tmp_path / log
    with path.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatch_aio.cli",
            "worker",
            "ledger_worker:make",
            *args,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=out,
        )
    return process, path


async def _stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), 30)
    except TimeoutError:
        process.kill()
        return await process.wait()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_the_worker_log_names_consumer_event_type_and_dead_letter(
    dispatch_dsn: str, dispatch_pool: asyncpg.Pool, tmp_path: Path, log_format: str
) -> None:
    dispatcher = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_tests")
    failing = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    process, log = await _start_worker(
        tmp_path,
        dispatch_dsn,
        "--log-format",
        log_format,
        "--log-level",
        "debug",
        "--stats-interval",
        "1",
    )
    try:

        async def dead_lettered() -> bool:
            count = await dispatch_pool.fetchval(
                "SELECT count(*) FROM dispatcher_dead_letter WHERE event_id = $1",
                failing.event_id,
            )
            return bool(count)

        await eventually(dead_lettered, within=30, what="the dead letter", every=0.05)
        letter = await dispatch_pool.fetchval(
            "SELECT dead_letter_id FROM dispatcher_dead_letter WHERE event_id = $1",
            failing.event_id,
        )
        handled = await dispatcher.publish(
            "credit.released",
            dispatcher.registry.example_payload("credit.released"),
            subject=uid("per"),
            actor="system:tests",
        )
        await eventually(
            lambda: handled.event_id in log.read_text() and "lag" in log.read_text(),
            within=30,
            what="the handled line and a stats line",
            every=0.05,
        )
    finally:
        code = await _stop(process)
    assert code == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text
    if log_format == "text":
        [line] = [x for x in text.splitlines() if "dead-lettered event" in x]
        for value in ("ledger", failing.event_id, "credit.locked", letter, "LookupError"):
            assert value in line, line
        assert f"dead_letter_id={letter}" in line
        assert "consumer=ledger" in line
        [debug] = [x for x in text.splitlines() if f"handled event {handled.event_id}" in x]
        assert " DEBUG " in debug
        assert "consumer=ledger" in debug
        assert "attempt=1" in debug
        assert any("handled" in x and "/s)" in x and "lag" in x for x in text.splitlines())
        return
    records = [json.loads(x) for x in text.splitlines()]  # every line is one JSON object
    [record] = [r for r in records if r.get("dead_letter_id") == letter]
    assert record["consumer"] == "ledger"
    assert record["event_id"] == failing.event_id
    assert record["event_type"] == "credit.locked"
    assert record["attempt"] == 2
    assert record["level"] == "WARNING"
    assert letter in record["message"]
    assert "LookupError" in record["message"]
    [debug] = [r for r in records if r.get("event_id") == handled.event_id]
    assert (debug["level"], debug["consumer"], debug["attempt"]) == ("DEBUG", "ledger", 1)
    stats = [r for r in records if "handled_per_second" in r]
    assert stats
    assert stats[0]["consumer"] == "ledger"
    assert {"lag", "handled", "dead_lettered", "retried"} <= set(stats[0])


async def test_a_pool_too_small_for_the_consumer_is_refused_in_one_line(
    dispatch_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "ledger_worker.py").write_text(FAILING_MODULE)
    run = await cli(
        "worker",
        "ledger_worker:make",
        "--pool-size",
        "1",
        "--concurrency",
        "4",
        "--stats-interval",
        "0",
        "--log-level",
        "error",
        dsn=dispatch_dsn,
        cwd=tmp_path,
    )
    assert_error(run, 1, "cannot run on a pool of 1 connection:")
    assert "give the pool at least 3" in run.err
    assert "concurrency + 2 = 6" in run.err


async def test_a_small_pool_runs_fewer_workers_and_says_the_real_figures(
    dispatch_dsn: str, tmp_path: Path
) -> None:
    process, log = await _start_worker(
        tmp_path, dispatch_dsn, "--pool-size", "3", "--concurrency", "4"
    )
    try:
        await eventually(
            lambda: "consumer started" in log.read_text(), within=30, what="the worker to start"
        )
    finally:
        assert await _stop(process) == 0, log.read_text()
    assert (
        "the pool has 3 connections, the fetch loop and the LISTEN connection hold 2: "
        "running 1 workers instead of concurrency=4 (give the pool concurrency + 2 = 6 "
        "connections)"
    ) in log.read_text()


ROOT = Path(__file__).resolve().parents[2]


async def test_the_readme_app_worker_factory_runs_through_the_cli(
    dispatch_dsn: str, dispatch_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    app = (ROOT / "examples" / "fastapi_app" / "app.py").read_text()
    (tmp_path / "app.py").write_text(app)
    env = {**os.environ, "DATABASE_URL": dispatch_dsn}
    env.pop("DISPATCH_AIO_CONTRACTS", None)
    made = await asyncio.create_subprocess_exec(sys.executable, "app.py", cwd=tmp_path, env=env)
    assert await asyncio.wait_for(made.wait(), 60) == 0  # the app's own tables
    dispatcher = Dispatcher(dispatch_pool, producer="revenue", tenant_id="tnt_sguild")
    payload = locked_payload(locked_credits=3)
    await dispatcher.publish("credit.locked", payload, subject=uid("per"), actor="system:revenue")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatch_aio.cli",
            "worker",
            "app:worker",
            "--stats-interval",
            "0",
            cwd=tmp_path,
            env=env,
            stderr=out,
        )
    try:

        async def held() -> bool:
            credits = await dispatch_pool.fetchval(
                "SELECT credits FROM lesson_hold WHERE lesson_id = $1", payload["lesson_id"]
            )
            return bool(credits == 3)

        await eventually(held, within=30, what="the worker to handle the event", every=0.05)
    finally:
        code = await _stop(process)
    assert code == 0, log.read_text()
    assert "consumer started" in log.read_text()


ASYNC_FACTORY = textwrap.dedent(
    """
    import asyncio
    from dispatch_aio import Consumer, Event

    async def make(pool):
        await asyncio.sleep(0)  # an async factory may await its own set-up
        consumer = Consumer(pool, name="async-made", poll_interval=0.2)

        @consumer.on("credit.locked")
        async def project(event: Event, conn) -> None:
            await conn.execute("INSERT INTO effects VALUES ($1)", event.event_id)

        return consumer

    def not_a_consumer(pool):
        return 42
    """
)


async def test_an_async_factory_is_awaited_and_a_wrong_return_is_one_line(
    dispatch_dsn: str, dispatch_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await dispatch_pool.execute("CREATE TABLE effects (event_id text PRIMARY KEY)")
    (tmp_path / "async_worker.py").write_text(ASYNC_FACTORY)
    wrong = await cli("worker", "async_worker:not_a_consumer", dsn=dispatch_dsn, cwd=tmp_path)
    assert_error(wrong, 1, "returned int, not a Consumer")
    dispatcher = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_tests")
    event = await dispatcher.publish(
        "credit.locked", locked_payload(), subject=uid("per"), actor="system:tests"
    )
    env = {**os.environ, "DATABASE_URL": dispatch_dsn}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatch_aio.cli",
        "worker",
        "async_worker:make",
        cwd=tmp_path,
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def projected() -> bool:
            found = await dispatch_pool.fetchval(
                "SELECT count(*) FROM effects WHERE event_id = $1", event.event_id
            )
            return bool(found)

        await eventually(projected, within=30, what="the async factory's consumer", every=0.05)
    finally:
        assert await _stop(process) == 0
