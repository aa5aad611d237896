"""Where the bundled ``contracts/`` and ``sql/`` directories live.

In a wheel they sit inside the package (``dispatch_aio/_bundled``); in a source checkout
they are the top-level folders of the repository.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["bundled_contracts_dir", "bundled_sql_dir"]


def _bundled(name: str) -> Path:
    packaged = Path(str(resources.files("dispatch_aio") / "_bundled" / name))
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"dispatch-aio's bundled {name}/ directory is missing: reinstall it")


def bundled_contracts_dir() -> Path:
    """The contracts directory shipped with this package."""
    return _bundled("contracts")


def bundled_sql_dir() -> Path:
    """The migrations and queries shipped with this package."""
    return _bundled("sql")
