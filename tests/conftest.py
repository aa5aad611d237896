"""Test-suite wiring. Async tests carry ``pytestmark = pytest.mark.anyio``; asyncio only."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
