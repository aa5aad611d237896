"""Every route x every kind of caller x every kind of input: exact status, no stray write.

Order of judgement: authenticate (401), authorise (403), then parse (422, 413), then the
row (404 for another tenant's). A refused request leaves the database as it was.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI, Request

from dispatch_aio import UsageError
from dispatch_aio.fastapi import (
    DEFAULT_PREFIX,
    MAX_BODY_BYTES,
    MAX_BODY_DEPTH,
    Principal,
    dlq_router,
)

from .helpers import seed_dead_letter

pytestmark = pytest.mark.anyio

TENANT = "tnt_a"

CALLERS: dict[str, dict[str, str]] = {
    "anonymous": {},
    "reader": {"x-subject": "rita", "x-tenant": TENANT},
    "writer": {"x-subject": "alice", "x-tenant": TENANT, "x-write": "1"},
    "other tenant": {"x-subject": "sam", "x-tenant": "tnt_b", "x-write": "1"},
    "operator": {"x-subject": "olga", "x-all-tenants": "1", "x-write": "1"},
}

ROUTES = ("list", "show", "resolve", "replay")
INPUTS = ("valid", "malformed id", "malformed body", "oversized body")


async def authenticate(request: Request) -> Principal | None:
    headers = request.headers
    if "x-subject" not in headers:
        return None
    if headers.get("x-all-tenants") == "1":
        return Principal(
            headers["x-subject"], None, can_write=headers.get("x-write") == "1", all_tenants=True
        )
    return Principal(headers["x-subject"], headers["x-tenant"], headers.get("x-write") == "1")


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _deep(depth: int) -> bytes:
    return b'{"resolved_by": ' + b"[" * depth + b"]" * depth + b', "replayed_by": "x"}'


def request_for(route: str, kind: str, dead_letter_id: str) -> dict[str, Any]:
    """The request (httpx keyword arguments) of one cell of the matrix."""
    item = f"{DEFAULT_PREFIX}/{dead_letter_id}"
    bad_id = f"{DEFAULT_PREFIX}/{dead_letter_id}%0A"
    body: dict[str, Any] = {}
    if kind == "malformed body":
        body = {"content": _deep(1000), "headers": {"content-type": "application/json"}}
    elif kind == "oversized body":
        big = json.dumps({"resolved_by": "x" * (1 << 20), "replayed_by": "x"}).encode()
        body = {"content": big, "headers": {"content-type": "application/json"}}
    if route == "list":
        params = {"consumer": "coaching"}
        if kind == "malformed id":  # the list's identifier is its cursor
            params["cursor"] = _cursor(f"0001-01-01T00:00:00+14:00|{dead_letter_id}")
        return {"method": "GET", "url": DEFAULT_PREFIX, "params": params, **body}
    url = bad_id if kind == "malformed id" else item
    if route == "show":
        return {"method": "GET", "url": url, **body}
    if kind == "valid":
        field = "resolved_by" if route == "resolve" else "replayed_by"
        body = {"json": {field: "tester"}}
    return {"method": "POST", "url": f"{url}/{route}", **body}


def expected(route: str, caller: str, kind: str) -> int:
    if caller == "anonymous":
        return 401
    writes = route in ("resolve", "replay")
    if writes and caller == "reader":
        return 403
    if kind == "malformed id":
        return 422
    if writes and kind == "oversized body":
        return 413
    if writes and kind == "malformed body":
        return 422
    # A GET has no body: whatever it carries is not read.
    if route != "list" and caller == "other tenant":
        return 404
    return 200


async def snapshot(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM dispatcher_dead_letter ORDER BY dead_letter_id")
    return [dict(r) for r in rows]


@pytest.fixture
async def client(dispatch_pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(dlq_router(dispatch_pool, authenticate=authenticate))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_the_matrix(client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool) -> None:
    await seed_dead_letter(dispatch_pool, tenant_id="tnt_b")
    failures = []
    cells = 0
    for route in ROUTES:
        for caller, headers in CALLERS.items():
            for kind in INPUTS:
                dead_letter_id = await seed_dead_letter(dispatch_pool, tenant_id=TENANT)
                before = await snapshot(dispatch_pool)
                kwargs = request_for(route, kind, dead_letter_id)
                kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
                response = await client.request(**kwargs)
                cells += 1
                want = expected(route, caller, kind)
                if response.status_code != want:
                    failures.append((route, caller, kind, want, response.status_code))
                    continue
                if want >= 400:  # a refusal quotes at most a little of the input
                    assert len(response.content) < 4096, (route, caller, kind)
                if want >= 400 or kwargs["method"] == "GET":
                    assert await snapshot(dispatch_pool) == before, (route, caller, kind)
    assert cells == len(ROUTES) * len(CALLERS) * len(INPUTS)
    assert not failures, "\n".join(map(str, failures))


async def test_the_operator_sees_and_replays_every_tenant(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    ours = await seed_dead_letter(dispatch_pool, tenant_id=TENANT)
    theirs = await seed_dead_letter(dispatch_pool, tenant_id="tnt_b")
    listed = await client.get(
        DEFAULT_PREFIX, params={"consumer": "coaching"}, headers=CALLERS["operator"]
    )
    assert {d["dead_letter_id"] for d in listed.json()["items"]} == {ours, theirs}
    mine = await client.get(
        DEFAULT_PREFIX, params={"consumer": "coaching"}, headers=CALLERS["writer"]
    )
    assert [d["dead_letter_id"] for d in mine.json()["items"]] == [ours]


async def test_a_deeply_nested_body_gets_a_clear_422(client: httpx.AsyncClient) -> None:
    dead_letter_id = "dlq_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d"
    response = await client.post(
        f"{DEFAULT_PREFIX}/{dead_letter_id}/resolve",
        content=_deep(MAX_BODY_DEPTH + 1),
        headers={**CALLERS["writer"], "content-type": "application/json"},
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert f"at most {MAX_BODY_DEPTH}" in error["msg"]


async def test_a_422_does_not_echo_the_whole_input(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    dead_letter_id = await seed_dead_letter(dispatch_pool, tenant_id=TENANT)
    long_name = "y" * (MAX_BODY_BYTES - 100)
    response = await client.post(
        f"{DEFAULT_PREFIX}/{dead_letter_id}/resolve",
        json={"resolved_by": long_name},
        headers=CALLERS["writer"],
    )
    assert response.status_code == 422
    assert len(response.content) < 1000
    listing = await client.get(
        DEFAULT_PREFIX,
        params={"consumer": "c" * 5000},
        headers=CALLERS["reader"],
    )
    assert listing.status_code == 422
    assert len(listing.content) < 1000


@pytest.mark.parametrize(
    "cursor",
    [
        "0001-01-01T00:00:00+14:00|dlq_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d",
        "9999-12-31T23:59:59-14:00|dlq_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d",
        "2026-01-01T00:00:00+00:00|dlq_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d\n",
        "2026-01-01T00:00:00|dlq_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d",
    ],
)
async def test_crafted_cursors_answer_422(client: httpx.AsyncClient, cursor: str) -> None:
    response = await client.get(
        DEFAULT_PREFIX,
        params={"consumer": "coaching", "cursor": _cursor(cursor)},
        headers=CALLERS["reader"],
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("ops", None, True), {}),
        (("ops", "", True), {}),
        (("ops", "   ", True), {}),
        (("ops", "tnt\x00a", True), {}),
        (("ops", "tnt_a", True), {"all_tenants": True}),
        (("", "tnt_a", True), {}),
        (("ops", "tnt_a", "yes"), {}),
        (("ops", 42, True), {}),
    ],
)
def test_a_principal_without_an_explicit_scope_is_refused(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(UsageError):
        Principal(*args, **kwargs)


def test_an_all_tenant_principal_is_explicit() -> None:
    operator = Principal("ops", None, can_write=False, all_tenants=True)
    assert operator.tenant_id is None
    assert operator.all_tenants
