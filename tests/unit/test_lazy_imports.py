"""The package and the command line import what they use when they use it.

``import dispatch_aio`` and building the ``dispatch-aio`` parser (``--help``, every usage
error) load no consumer, pydantic model, OpenTelemetry, HTTP client or contract
registry; each public name still resolves, from its own module.
"""

from __future__ import annotations

import subprocess
import sys

import dispatch_aio
from dispatch_aio import _errors
from dispatch_aio._contracts.scaffold import ID_PROFILES
from dispatch_aio.cli import build_parser

HEAVY = (
    "asyncpg",
    "pydantic",
    "opentelemetry",
    "httpx",
    "fastapi",
    "uvicorn",
    "dispatch_aio._consume",
    "dispatch_aio._registry",
    "dispatch_aio._dispatcher",
    "dispatch_aio._delivery",
)


def _loaded_after(code: str) -> list[str]:
    probe = f"""
import sys
{code}
print("\\n".join(sorted(sys.modules)))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.split()


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]


def test_importing_the_package_loads_no_heavy_module() -> None:
    assert _heavy(_loaded_after("import dispatch_aio")) == []


def test_building_the_command_line_parser_loads_no_heavy_module() -> None:
    loaded = _loaded_after(
        "from dispatch_aio.cli import build_parser\n"
        "build_parser().parse_args(['status', '--idle-after', '2h'])"
    )
    assert "dispatch_aio.cli.app" in loaded
    assert _heavy(loaded) == []


def test_every_public_name_resolves_from_its_module() -> None:
    lazy = set(dispatch_aio._LAZY)
    eager = {name for name in dispatch_aio.__all__ if getattr(_errors, name, None) is not None}
    assert lazy | eager == set(dispatch_aio.__all__)
    assert not lazy & eager
    for name in dispatch_aio.__all__:
        value = getattr(dispatch_aio, name)
        assert value is not None, name
        assert name in dir(dispatch_aio)


def test_the_command_line_offers_the_scaffold_id_profiles() -> None:
    parser = build_parser()
    for profile in ID_PROFILES:
        args = parser.parse_args(["contracts", "init", "contracts", "--id-profile", profile])
        assert args.id_profile == profile
