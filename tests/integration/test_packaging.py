"""The wheel carries the contracts and the SQL, and the package finds them there."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = "dispatch_aio/_bundled"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Without isolation when hatchling is at hand: no index needed, same backend.
    isolation = ["--no-isolation"] if importlib.util.find_spec("hatchling") else []
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (found,) = out.glob("dispatch_aio-*.whl")
    return found


def _source_payload_schemas() -> set[str]:
    registry = json.loads((ROOT / "contracts" / "event-types-registry.json").read_text())
    return {
        version["payload_schema"]
        for entry in registry["event_types"].values()
        for version in entry["versions"]
    }


def test_wheel_bundles_contracts_sql_and_py_typed(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())

        def same_as_source(inside: str, source: Path) -> None:
            assert inside in names, f"{inside} is missing from {wheel.name}"
            assert archive.read(inside) == source.read_bytes(), f"{inside} differs from source"

        assert "dispatch_aio/py.typed" in names
        assert "dispatch_aio/__init__.py" in names
        for relative in (
            "event-types-registry.json",
            "event-envelope/schema/envelope-v1.json",
        ):
            same_as_source(f"{BUNDLED}/contracts/{relative}", ROOT / "contracts" / relative)
        schemas = _source_payload_schemas()
        assert len(schemas) == 24
        for relative in schemas:
            same_as_source(f"{BUNDLED}/contracts/{relative}", ROOT / "contracts" / relative)
        bundled_payloads = {
            name
            for name in names
            if name.startswith(f"{BUNDLED}/contracts/") and "/schema/payloads/" in name
        }
        assert bundled_payloads == {f"{BUNDLED}/contracts/{s}" for s in schemas}
        for relative in ("migrations/0001_tables.sql", "queries.sql"):
            same_as_source(f"{BUNDLED}/sql/{relative}", ROOT / "sql" / relative)
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "dispatch_aio.pytest_plugin" in archive.read(entry_points).decode()


def test_unpacked_wheel_loads_its_bundled_copies(wheel: Path, tmp_path: Path) -> None:
    """Imported from the wheel alone, the package finds contracts and SQL inside itself."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    probe = """
import json
import dispatch_aio
from dispatch_aio._registry import Registry
from dispatch_aio._resources import bundled_contracts_dir, bundled_sql_dir
from dispatch_aio._sql import migrations
registry = Registry.load()
print(json.dumps({
    "package": dispatch_aio.__file__,
    "contracts": str(bundled_contracts_dir()),
    "sql": str(bundled_sql_dir()),
    "event_types": len(registry.event_types()),
    "migrations": [m.version for m in migrations()],
}))
"""
    env = {k: v for k, v in os.environ.items() if k != "DISPATCH_AIO_CONTRACTS"}
    env["PYTHONPATH"] = str(tmp_path)  # ahead of the editable install in site-packages
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["package"]).is_relative_to(tmp_path)
    assert Path(found["contracts"]) == tmp_path / BUNDLED / "contracts"
    assert Path(found["sql"]) == tmp_path / BUNDLED / "sql"
    assert found["event_types"] == 23
    assert found["migrations"][0] == 1
