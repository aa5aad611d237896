"""``dispatch-aio fanout CONFIG`` in a subprocess, delivering to an inbox on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio import Dispatcher
from dispatch_aio.inbox import serve_inbox
from dispatch_aio.pytest_plugin import TestPostgres

from ..integration.delivery_helpers import SECRET, extra_database, fanout_config
from ..integration.helpers import eventually, locked_payload, uid
from .test_cli_base import assert_error, cli

pytestmark = pytest.mark.anyio

EVENTS = 30


async def fan_out_to_an_inbox(
    dispatch_dsn: str, postgres: TestPostgres, tmp_path: Path, expected: int, *options: str
) -> tuple[list[str], str]:
    """Run ``dispatch-aio fanout`` to an inbox until it holds ``expected`` events, then
    SIGTERM it: the event ids the inbox received and the worker's log (exit 0 asserted)."""
    async with (
        extra_database(postgres) as receiver_dsn,
        serve_inbox(receiver_dsn, secrets=[SECRET]) as inbox,
    ):
        config = tmp_path / "fanout.json"
        config.write_text(json.dumps(fanout_config({"coaching": inbox.url})))
        env = {**os.environ, "DATABASE_URL": dispatch_dsn}
        env.pop("DISPATCH_AIO_CONTRACTS", None)
        log = tmp_path / "fanout.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dispatch_aio.cli",
                "fanout",
                str(config),
                *options,
                env=env,
                stderr=out,
            )
        try:

            async def all_received() -> bool:
                count = await inbox.pool.fetchval("SELECT count(*) FROM dispatcher_event")
                return bool(count == expected)

            await eventually(all_received, within=60, what="every event at the inbox", every=0.05)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                code = await process.wait()
        assert code == 0, log.read_text()
        rows = await inbox.pool.fetch("SELECT event_id FROM dispatcher_event")
    return [r["event_id"] for r in rows], log.read_text()


async def test_fanout_delivers_each_event_once_and_drains_on_sigterm(
    dispatch_dsn: str,
    dispatch_pool: asyncpg.Pool,
    dispatch_postgres: TestPostgres,
    tmp_path: Path,
) -> None:
    dispatcher = Dispatcher(dispatch_pool, producer="revenue", tenant_id="tnt_sguild")
    people = [uid("per") for _ in range(4)]
    sent = [
        e.event_id
        for e in await dispatcher.publish_many(
            [
                {
                    "event_type": "credit.locked",
                    "payload": locked_payload(),
                    "subject": people[i % len(people)],
                    "actor": "system:revenue",
                }
                for i in range(EVENTS)
            ]
        )
    ]
    received, text = await fan_out_to_an_inbox(dispatch_dsn, dispatch_postgres, tmp_path, len(sent))
    assert sorted(received) == sorted(sent)  # each exactly once
    handled = await dispatch_pool.fetchval(
        "SELECT count(*) FROM dispatcher_dedup WHERE consumer = 'fanout.coaching'"
    )
    assert handled == EVENTS
    assert "consumer started" in text
    assert "Traceback" not in text


async def test_fanout_with_a_missing_or_bad_configuration_is_a_usage_error(
    dispatch_dsn: str, tmp_path: Path
) -> None:
    missing = await cli("fanout", str(tmp_path / "nowhere.json"), dsn=dispatch_dsn)
    assert_error(missing, 2, "cannot read fan-out configuration")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"endpoints": {"coaching": {"url": "http://127.0.0.1:9/in"}}}))
    assert_error(await cli("fanout", str(bad), dsn=dispatch_dsn), 2, "fan-out configuration")
    other = tmp_path / "other.json"
    config = fanout_config({"coaching": "http://127.0.0.1:9/in"})
    other.write_text(json.dumps({"schema": "revenue", **config}))
    assert_error(
        await cli("fanout", str(other), "--schema", "billing", dsn=dispatch_dsn), 2, "disagrees"
    )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_fanout_runs_on_the_event_loop_it_is_given(
    loop: str,
    dispatch_dsn: str,
    dispatch_pool: asyncpg.Pool,
    dispatch_postgres: TestPostgres,
    tmp_path: Path,
) -> None:
    dispatcher = Dispatcher(dispatch_pool, producer="revenue", tenant_id="tnt_sguild")
    subject = uid("per")
    sent = [
        (
            await dispatcher.publish(
                "credit.locked", locked_payload(), subject=subject, actor="system:revenue"
            )
        ).event_id
        for _ in range(3)
    ]
    received, text = await fan_out_to_an_inbox(
        dispatch_dsn, dispatch_postgres, tmp_path, len(sent), "--loop", loop
    )
    assert sorted(received) == sorted(sent)
    assert f"fan-out on the {loop} event loop" in text
