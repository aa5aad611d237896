"""``dispatch-aio fanout --loop``: which event loop the worker is given (no database)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import uvloop

from dispatch_aio.cli.app import build_parser, main
from dispatch_aio.cli.context import EXIT_USAGE, CommandError
from dispatch_aio.cli.fanout import event_loop_factory, loop_name


@pytest.fixture
def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import uvloop`` fails, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


def test_auto_is_uvloop_when_it_is_installed() -> None:
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop


def test_asyncio_is_asyncios_own_loop() -> None:
    assert event_loop_factory("asyncio") is None


@pytest.mark.usefixtures("without_uvloop")
def test_auto_falls_back_to_asyncio_without_uvloop() -> None:
    assert event_loop_factory("auto") is None


@pytest.mark.usefixtures("without_uvloop")
def test_uvloop_without_uvloop_says_how_to_install_it() -> None:
    with pytest.raises(CommandError, match=r"pip install uvloop.*--loop asyncio") as caught:
        event_loop_factory("uvloop")
    assert caught.value.exit_code == EXIT_USAGE


def test_an_unknown_loop_is_a_usage_error() -> None:
    with pytest.raises(CommandError, match="must be one of"):
        event_loop_factory("trio")


def test_the_loop_is_named_by_its_kind() -> None:
    for make, name in ((asyncio.new_event_loop, "asyncio"), (uvloop.new_event_loop, "uvloop")):
        loop = make()
        try:
            assert loop_name(loop) == name
        finally:
            loop.close()


@pytest.mark.parametrize(
    ("argv", "factory"),
    [
        ([], uvloop.new_event_loop),
        (["--loop", "asyncio"], None),
        (["--loop", "uvloop"], uvloop.new_event_loop),
    ],
)
def test_the_command_asks_for_the_loop_of_its_option(argv: list[str], factory: object) -> None:
    args = build_parser().parse_args(["fanout", "fanout.json", *argv])
    assert args.loop_factory(args) is factory


@pytest.mark.usefixtures("without_uvloop")
def test_the_command_refuses_uvloop_without_it_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "fanout.json"
    config.write_text(json.dumps({"endpoints": {}}))
    code = main(["--dsn", "postgresql:///nowhere", "fanout", str(config), "--loop", "uvloop"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("error: --loop uvloop: uvloop cannot be imported"), err
    assert len(err.splitlines()) == 1
