"""The command line at its edges: no password in any output, arguments checked first."""

from __future__ import annotations

import base64
import logging
import os
import sys

import anyio
import asyncpg
import pytest

from dispatch_aio.cli import main

from .test_cli_base import UNREACHABLE, cli

SECRET_PIECES = ("Sup3r", "SecretPw")

#: One DSN per way of carrying a password; every one points at a port nothing answers.
DSN_FORMS = {
    "userinfo": "postgresql://app:Sup3rSecretPw@127.0.0.1:1/app",
    "query": "postgresql://app@127.0.0.1:1/app?password=Sup3rSecretPw",
    "keyword": "host=127.0.0.1 port=1 user=app password=Sup3rSecretPw dbname=app",
    "unencoded slash": "postgresql://app:Sup3r/SecretPw@127.0.0.1:1/app",
    "percent-encoded": "postgresql://app:Sup3r%2FSecretPw@127.0.0.1:1/app",
}

DLQ_ID = "dlq_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d"

#: Every subcommand that reads a DSN (worker runs in a subprocess below: it sets up logging).
COMMANDS = {
    "status": ["status"],
    "migrate": ["migrate"],
    "dlq list": ["dlq", "list", "--consumer", "coaching"],
    "dlq show": ["dlq", "show", DLQ_ID],
    "dlq resolve": ["dlq", "resolve", DLQ_ID, "--by", "ops"],
    "dlq replay": ["dlq", "replay", DLQ_ID, "--by", "ops"],
    "dlq replay-all": ["dlq", "replay-all", "--consumer", "coaching", "--by", "ops"],
    "prune": ["prune", "--older-than", "30d"],
    "demo": ["demo", "--events", "1"],
    "contracts": ["contracts", "check"],
}


def run_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("form", DSN_FORMS)
@pytest.mark.parametrize("command", COMMANDS)
def test_no_subcommand_prints_the_password(
    command: str,
    form: str,
    debug: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = ["--debug"] if debug else []
    code, output = run_main(
        capsys, monkeypatch, *options, *COMMANDS[command], "--dsn", DSN_FORMS[form]
    )
    if command != "contracts":
        assert code in (1, 2), output
        assert "error: " in output
    for piece in SECRET_PIECES:
        assert piece not in output


@pytest.mark.anyio
@pytest.mark.parametrize("form", DSN_FORMS)
async def test_the_worker_does_not_print_the_password(form: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DATABASE_URL"] = DSN_FORMS[form]
    command = [sys.executable, "-m", "dispatch_aio", "--debug", "worker", "dispatch_aio:Registry"]
    with anyio.fail_after(60):
        done = await anyio.run_process(command, env=env, check=False)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode in (1, 2), output
    for piece in SECRET_PIECES:
        assert piece not in output


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "--older-than", "99999999999d"],
        ["prune", "--older-than", "9" * 40 + "s"],
        ["prune", "--older-than", "30d", "--batch-size", "0"],
        ["dlq", "show", DLQ_ID + "\n"],
        ["dlq", "show", "dlq_not-a-uuid"],
        ["dlq", "show", DLQ_ID.upper()],
        ["dlq", "resolve", "evt_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d", "--by", "ops"],
        ["dlq", "replay", "' OR 1=1 --", "--by", "ops"],
        ["dlq", "list", "--consumer", "coaching", "--limit", "0"],
        ["dlq", "list", "--consumer", "coaching", "--limit", "501"],
        ["dlq", "list", "--consumer", "coaching", "--limit", "ten"],
        ["dlq", "list", "--consumer", "coaching", "--before", "garbage"],
        [
            "dlq",
            "list",
            "--consumer",
            "coaching",
            "--before",
            _cursor(f"0001-01-01T00:00:00+14:00|{DLQ_ID}"),
        ],
        [
            "dlq",
            "list",
            "--consumer",
            "coaching",
            "--before",
            _cursor(f"9999-12-31T23:59:59-14:00|{DLQ_ID}"),
        ],
        ["dlq", "list", "--consumer", "nul\x00name"],
        ["dlq", "resolve", DLQ_ID, "--by", ""],
        ["status", "--warn-after", "nan"],
        ["status", "--warn-after", "-1"],
        ["demo", "--events", "0"],
        ["worker", "x:y", "--pool-size", "0"],
    ],
    ids=lambda args: " ".join(args)[:60],
)
def test_bad_arguments_exit_2_with_one_line_before_connecting(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The DSN cannot answer: an argument checked only after connecting would exit 1.
    code, output = run_main(capsys, monkeypatch, *args, "--dsn", UNREACHABLE)
    assert code == 2, output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output
    assert "cannot reach" not in output


def test_python_dash_m_dispatch_aio_runs_the_command_line() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "dispatch_aio", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dispatch-aio ")


@pytest.mark.anyio
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
async def test_status_masks_a_password_in_a_horizon_holders_query(
    dispatch_dsn: str, as_json: bool
) -> None:
    holder = await asyncpg.connect(dispatch_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("CREATE TEMP TABLE hold (x int)")
        await holder.fetchval("SELECT 'host=db password=Sup3rSecretPw'::text")
        run = await cli("status", *(["--json"] if as_json else []), dsn=dispatch_dsn)
        await tx.rollback()
    finally:
        await holder.close()
    assert run.code == 0, run
    assert "password=***" in run.out
    for piece in SECRET_PIECES:
        assert piece not in run.out + run.err


@pytest.mark.parametrize("form", DSN_FORMS)
def test_worker_log_lines_are_masked(form: str) -> None:
    from dispatch_aio.cli.logs import RedactingFormatter

    dsn = DSN_FORMS[form]
    # The password as a driver message would repeat it (decoded, with its slash).
    repeated = (
        "Sup3r/SecretPw" if form in ("unencoded slash", "percent-encoded") else "Sup3rSecretPw"
    )
    record = logging.LogRecord(
        "dispatch_aio.consumer", logging.ERROR, __file__, 1, "lost %s: %s", (dsn, repeated), None
    )
    line = RedactingFormatter(logging.Formatter("%(message)s"), dsn).format(record)
    assert line.startswith("lost ")
    for piece in SECRET_PIECES:
        assert piece not in line
