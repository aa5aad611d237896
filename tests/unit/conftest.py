"""Fixtures the publishing unit tests share: the bundled registry, a pool-less dispatcher."""

from __future__ import annotations

import pytest

from dispatch_aio import Dispatcher, Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load()


@pytest.fixture
def dispatcher(registry: Registry) -> Dispatcher:
    return Dispatcher(None, producer="tests", tenant_id="tnt_a", registry=registry)
