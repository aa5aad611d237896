"""The consumer benchmark runs end to end (``--quick``); its figures are not checked here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch_aio import ConfigurationError
from dispatch_aio.testing import find_pg_bin

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "consume.py"

HEADINGS = (
    "== settings ==",
    "== (a) backlog drain, no-op handler ==",
    "== (b) backlog drain, handler inserting one row ==",
    "== (c) end-to-end latency ==",
    "== (d) drain behind a long history ==",
    "== instrumentation overhead ==",
    "== cost per event ==",
    "== goals ==",
)


def _requirements_missing() -> str | None:
    if not SCRIPT.exists():
        return "benchmarks/ is not part of this checkout"
    if importlib.util.find_spec("pgqueuer") is None:
        return "PgQueuer (the benchmark's baseline) is not installed: pip install '.[bench]'"
    try:
        find_pg_bin()
    except ConfigurationError as exc:
        return str(exc)
    return None


def _run(timeout: float, *options: str) -> str:
    """The benchmark's standard output with ``options``; skips when it cannot run here."""
    missing = _requirements_missing()
    if missing is not None:
        pytest.skip(missing)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{output}\n{result.stderr[-4000:]}"
    return output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_consume_benchmark_quick_run_prints_every_table() -> None:
    output = _run(540, "--quick")
    for heading in HEADINGS:
        assert heading in output, f"missing {heading!r} in:\n{output}"
    verdicts = [
        line.split()[0] for line in output.splitlines() if line.strip()[:4] in ("PASS", "FAIL")
    ]
    assert len(verdicts) == 5, output  # one per goal, whatever the figures on this machine


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_consume_benchmark_drains_only_prints_the_two_drain_ratios() -> None:
    output = _run(240, "--quick", "--drains-only")
    assert "(a) dispatch-aio no-op / PgQueuer no-op" in output, output
    assert "(b) dispatch-aio writing / PgQueuer no-op" in output, output
    assert HEADINGS[4] not in output  # no long history loaded
