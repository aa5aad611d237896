"""examples/deploy without Docker: the compose file's commands, run as subprocesses.

The image cannot be built here, so the test does what the image would: it copies
``app.py`` where the Dockerfile puts it (the working directory of every service), takes
each service's ``command`` and ``environment`` from ``compose.yaml`` (the database URL
pointed at a fresh, unmigrated database of the test server), runs ``migrate`` to
completion, then starts ``app`` and the worker's replicas, places an order over HTTP and
waits for a worker to handle it; SIGTERM then stops every process cleanly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from dispatch_aio.pytest_plugin import TestPostgres

from ..integration.helpers import eventually, uid

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "examples" / "deploy"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_has_the_services_of_a_deployment() -> None:
    services = compose()["services"]
    assert set(services) == {"db", "migrate", "app", "worker"}
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    for name in ("app", "worker"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }
    # Every file the Dockerfile copies exists in the build context (the repository root).
    assert services["app"]["build"]["context"] == "../.."
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), source


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(service: dict[str, Any], port: int) -> list[str]:
    """The service's command; the published port becomes a free one on loopback."""
    command = [str(part) for part in service["command"]]
    for option, value in (("--port", str(port)), ("--host", "127.0.0.1")):
        if option in command:
            command[command.index(option) + 1] = value
    return command


async def test_compose_commands_migrate_serve_and_work(
    tmp_path: Path, dispatch_postgres: TestPostgres
) -> None:
    services = compose()["services"]
    workdir = tmp_path / "app"  # the image's WORKDIR /app, holding app.py
    workdir.mkdir()
    shutil.copy(ROOT / "examples" / "fastapi_app" / "app.py", workdir / "app.py")
    database = await dispatch_postgres.create_database(migrated=False)
    dsn = dispatch_postgres.dsn(database)
    env = {
        **os.environ,
        **{k: str(v) for k, v in services["app"]["environment"].items()},
        "DATABASE_URL": dsn,
        # The console scripts of this environment stand for the image's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(name: str, command: list[str]) -> asyncio.subprocess.Process:
        log = (logs / f"{name}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            *command, cwd=workdir, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
        log.close()
        processes[name] = process
        return process

    try:
        migrate = await start("migrate", _command(services["migrate"], 0))
        assert await asyncio.wait_for(migrate.wait(), 120) == 0, _logs(logs)

        port = _free_port()
        await start("app", _command(services["app"], port))
        for replica in range(services["worker"]["deploy"]["replicas"]):
            await start(f"worker-{replica}", _command(services["worker"], 0))

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def serving() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(serving, within=60, what="the app to serve", every=0.1)
            lesson, person = uid("les"), uid("per")
            placed = await http.post(
                f"/lessons/{lesson}/lock", json={"person_id": person, "credits": 3}
            )
            assert placed.status_code == 201, placed.text

        conn = await asyncpg.connect(dsn)
        try:

            async def held() -> bool:
                credits = await conn.fetchval(
                    "SELECT credits FROM lesson_hold WHERE lesson_id = $1", lesson
                )
                return credits == 3

            await eventually(held, within=60, what="a worker to handle the event", every=0.1)
        finally:
            await conn.close()
        # Every replica serves (and has its SIGTERM handler) before the stop below: a
        # replica still importing would die of the signal's default action.
        replicas = services["worker"]["deploy"]["replicas"]

        def workers_started() -> bool:
            return all(
                "consumer started" in (logs / f"worker-{r}.log").read_text()
                for r in range(replicas)
            )

        await eventually(workers_started, within=60, what="every worker replica to start")
        running = [n for n, p in processes.items() if n != "migrate" and p.returncode is None]
        assert len(running) == 3, _logs(logs)  # app and both workers are still serving
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in processes.items():
            try:
                codes[name] = await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                codes[name] = await process.wait()
        await dispatch_postgres.drop_database(database)
    # uvicorn re-raises SIGTERM once it has shut down cleanly (exit status -15).
    app_code = codes.pop("app")
    assert app_code in (0, -signal.SIGTERM), _logs(logs)
    assert "Application shutdown complete" in (logs / "app.log").read_text()
    assert codes == dict.fromkeys(codes, 0), _logs(logs)
    assert "Traceback" not in _logs(logs)


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in folder.iterdir())
