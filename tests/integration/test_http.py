"""The FastAPI dead-letter router in process: auth on every route, tenants, 403/409/422, fuzz."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg
import httpx
import pytest
import schemathesis
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import BaseRoute, Route

from dispatch_aio import UsageError
from dispatch_aio.fastapi import DEFAULT_PREFIX, Principal, dlq_router

from .helpers import seed_dead_letter as seed
from .helpers import uid as new_id

pytestmark = pytest.mark.anyio

BASE_URL = "http://testserver"
TENANT = "tnt_a"
OTHER_TENANT = "tnt_b"
#: A principal of TENANT that may write, as headers of the test authentication.
WRITER = {"x-test-subject": "alice", "x-test-tenant": TENANT, "x-test-can-write": "1"}
READER = {"x-test-subject": "rita", "x-test-tenant": TENANT, "x-test-can-write": "0"}
STRANGER = {"x-test-subject": "sam", "x-test-tenant": OTHER_TENANT, "x-test-can-write": "1"}


async def authenticate(request: Request) -> Principal | None:
    """Test authentication: the principal is spelled out in headers."""
    tenant = request.headers.get("x-test-tenant")
    if tenant is None:
        return None
    return Principal(
        subject=request.headers.get("x-test-subject", "anonymous"),
        tenant_id=tenant,
        can_write=request.headers.get("x-test-can-write") == "1",
    )


async def snapshot(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM dispatcher_dead_letter ORDER BY dead_letter_id")
    return [dict(r) for r in rows]


@pytest.fixture
def app(dispatch_pool: asyncpg.Pool) -> FastAPI:
    app = FastAPI()
    app.include_router(dlq_router(dispatch_pool, authenticate=authenticate))
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


# --------------------------------------------------------------------------- the routes


@dataclass(frozen=True)
class RouteCall:
    """A well-formed request to one route, whatever the principal."""

    method: str
    path: str
    params: dict[str, str]
    body: dict[str, Any] | None

    @property
    def has_id(self) -> bool:
        return "{dead_letter_id}" in self.path

    def url(self, dead_letter_id: str) -> str:
        return self.path.replace("{dead_letter_id}", dead_letter_id)

    async def send(
        self, client: httpx.AsyncClient, dead_letter_id: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await client.request(
            self.method,
            self.url(dead_letter_id),
            params=self.params,
            json=self.body,
            headers=headers or {},
        )


def api_routes(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every APIRoute below ``routes`` with its full path; fails on a route type it can't see."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif (router := getattr(route, "original_router", None)) is not None:
            # Recent FastAPI versions keep an included router as one nested route.
            context = getattr(route, "include_context", None)
            yield from api_routes(router.routes, prefix + getattr(context, "prefix", ""))
        else:
            # Only FastAPI's own documentation routes may be something else.
            assert isinstance(route, Route), route
            assert route.path in {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def route_calls(app: FastAPI) -> list[RouteCall]:
    """One well-formed request per (method, route) of the app, read from ``app.routes``."""
    calls = []
    for path, route in api_routes(app.routes):
        query = route.dependant.query_params
        params = {p.alias: "coaching" for p in query if p.field_info.is_required()}
        body = None
        # The body is parsed by the handler after authentication, so it is declared in
        # the operation's OpenAPI requestBody rather than as a FastAPI body field.
        assert route.body_field is None, path
        request_body = (route.openapi_extra or {}).get("requestBody")
        if request_body is not None:
            schema = request_body["content"]["application/json"]["schema"]
            body = {name: "tester" for name in schema.get("required", [])}
        for method in sorted(route.methods):
            calls.append(RouteCall(method, path, params, body))
    return calls


async def test_route_enumeration_finds_the_four_routes(app: FastAPI) -> None:
    found = {(c.method, c.path) for c in route_calls(app)}
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert found == documented
    assert found == {
        ("GET", DEFAULT_PREFIX),
        ("GET", DEFAULT_PREFIX + "/{dead_letter_id}"),
        ("POST", DEFAULT_PREFIX + "/{dead_letter_id}/resolve"),
        ("POST", DEFAULT_PREFIX + "/{dead_letter_id}/replay"),
    }


async def test_well_formed_requests_reach_every_handler(
    app: FastAPI, client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    # The baseline the negative tests below rely on: these requests do succeed.
    for call in route_calls(app):
        dead_letter_id = await seed(dispatch_pool)
        response = await call.send(client, dead_letter_id, WRITER)
        assert response.status_code == 200, (call, response.text)


# --------------------------------------------------------------------------- authentication


async def test_the_router_cannot_be_built_without_authentication(
    dispatch_pool: asyncpg.Pool,
) -> None:
    build: Callable[..., Any] = dlq_router
    with pytest.raises(TypeError, match="authenticate"):
        build(dispatch_pool)
    with pytest.raises(UsageError, match="authenticate"):
        build(dispatch_pool, authenticate=None)
    with pytest.raises(UsageError, match="authenticate"):
        build(dispatch_pool, authenticate="yes")


async def test_the_pool_may_come_from_a_callable(dispatch_pool: asyncpg.Pool) -> None:
    # For applications that create their pool in the lifespan, after the router.
    app = FastAPI()
    app.include_router(dlq_router(lambda: dispatch_pool, authenticate=authenticate))
    dead_letter_id = await seed(dispatch_pool)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        response = await client.get(f"{DEFAULT_PREFIX}/{dead_letter_id}", headers=READER)
    assert response.status_code == 200
    assert response.json()["dead_letter_id"] == dead_letter_id
    with pytest.raises(UsageError, match="pool"):
        dlq_router(None, authenticate=authenticate)  # type: ignore[arg-type]


async def test_every_route_answers_401_without_credentials(
    app: FastAPI, client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    dead_letter_id = await seed(dispatch_pool)
    before = await snapshot(dispatch_pool)
    calls = route_calls(app)
    assert calls
    for call in calls:
        response = await call.send(client, dead_letter_id)
        assert response.status_code == 401, (call, response.text)
        assert response.json() == {"detail": "not authenticated"}
        # Even a malformed request is refused for lack of credentials first.
        response = await client.request(call.method, call.url("nope"), json={"bad": 1})
        assert response.status_code == 401, (call, response.text)
    assert await snapshot(dispatch_pool) == before


async def test_an_authentication_dependency_may_raise_its_own_401(
    dispatch_pool: asyncpg.Pool,
) -> None:
    from fastapi import HTTPException

    async def strict(request: Request) -> Principal:
        raise HTTPException(401, "token expired", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI()
    app.include_router(dlq_router(dispatch_pool, authenticate=strict))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        for call in route_calls(app):
            response = await call.send(client, new_id("dlq"), WRITER)
            assert response.status_code == 401
            assert response.json() == {"detail": "token expired"}
            assert response.headers["www-authenticate"] == "Bearer"


# --------------------------------------------------------------------------- tenants, roles


async def test_another_tenants_row_answers_404_and_stays_unchanged(
    app: FastAPI, client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    dead_letter_id = await seed(dispatch_pool)
    before = await snapshot(dispatch_pool)
    for call in route_calls(app):
        response = await call.send(client, dead_letter_id, STRANGER)
        if call.has_id:
            assert response.status_code == 404, (call, response.text)
            assert dead_letter_id in response.json()["detail"]
        else:
            assert response.status_code == 200, (call, response.text)
            assert response.json() == {"items": [], "next_cursor": None}
    assert await snapshot(dispatch_pool) == before


async def test_a_read_only_principal_reads_but_gets_403_on_writes(
    app: FastAPI, client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    dead_letter_id = await seed(dispatch_pool)
    before = await snapshot(dispatch_pool)
    posts = 0
    for call in route_calls(app):
        response = await call.send(client, dead_letter_id, READER)
        if call.method == "POST":
            posts += 1
            assert response.status_code == 403, (call, response.text)
            assert "rita" in response.json()["detail"]
        else:
            assert response.status_code == 200, (call, response.text)
    assert posts == 2
    assert await snapshot(dispatch_pool) == before


# --------------------------------------------------------------------------- 422


@pytest.mark.parametrize(
    "malformed",
    ["nope", "dlq_123", "DLQ_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d", "evt_x", "dlq_%00"],
)
async def test_malformed_ids_answer_422(
    app: FastAPI, client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool, malformed: str
) -> None:
    before = await snapshot(dispatch_pool)
    for call in route_calls(app):
        if not call.has_id:
            continue
        response = await call.send(client, malformed, WRITER)
        assert response.status_code == 422, (call, response.text)
        [error] = response.json()["detail"]
        assert error["loc"] == ["path", "dead_letter_id"]
        assert "not a dead-letter id" in error["msg"]
    assert await snapshot(dispatch_pool) == before


async def test_malformed_bodies_answer_422(
    app: FastAPI, client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    dead_letter_id = await seed(dispatch_pool)
    before = await snapshot(dispatch_pool)
    for call in route_calls(app):
        if call.body is None:
            continue
        [field] = call.body
        bad_bodies: list[dict[str, Any]] = [
            {"json": {}},
            {"json": {field: ""}},
            {"json": {field: "   "}},
            {"json": {field: 42}},
            {"json": {field: "x" * 201}},
            {"json": {field: "nul\x00here"}},
            {"json": {field: "ok", "unexpected": 1}},
            {"json": ["not", "an", "object"]},
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            {"content": b'{"%s": "\\ud800"}' % field.encode()},
            {"content": b"\xc3(not utf-8"},
        ]
        for bad in bad_bodies:
            headers = {**WRITER, **bad.pop("headers", {"content-type": "application/json"})}
            response = await client.post(call.url(dead_letter_id), headers=headers, **bad)
            assert response.status_code == 422, (call.path, bad, response.text)
            assert response.json()["detail"], response.text
    assert await snapshot(dispatch_pool) == before


async def test_bad_list_queries_answer_422(client: httpx.AsyncClient) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        ({"consumer": ""}, "consumer"),
        ({"consumer": " "}, "consumer"),
        ({"consumer": "a\x00b"}, "consumer"),
        ({"consumer": "coaching", "limit": "0"}, "limit"),
        ({"consumer": "coaching", "limit": "501"}, "limit"),
        ({"consumer": "coaching", "limit": "many"}, "limit"),
        ({"consumer": "coaching", "include_resolved": "perhaps"}, "include_resolved"),
        ({"consumer": "coaching", "cursor": "not-a-cursor"}, "cursor"),
    ]
    for params, field in cases:
        response = await client.get(DEFAULT_PREFIX, params=params, headers=WRITER)
        assert response.status_code == 422, (params, response.text)
        locs = [e["loc"] for e in response.json()["detail"]]
        assert ["query", field] in locs, (params, response.text)


# --------------------------------------------------------------------------- behaviour


async def test_list_pages_with_the_cursor(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    ids = {await seed(dispatch_pool) for _ in range(5)}
    await seed(dispatch_pool, tenant_id=OTHER_TENANT)
    await seed(dispatch_pool, resolved=True)
    seen: list[str] = []
    params = {"consumer": "coaching", "limit": "2"}
    while True:
        response = await client.get(DEFAULT_PREFIX, params=params, headers=READER)
        assert response.status_code == 200
        page = response.json()
        seen += [item["dead_letter_id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert sorted(seen) == sorted(ids)
    everything = await client.get(
        DEFAULT_PREFIX, params={"consumer": "coaching", "include_resolved": "true"}, headers=READER
    )
    assert len(everything.json()["items"]) == 6


async def test_leaving_out_the_consumer_lists_every_consumers_letters(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    mine = {await seed(dispatch_pool) for _ in range(2)}
    mine.add(await seed(dispatch_pool, consumer="billing"))
    other_tenant = await seed(dispatch_pool, consumer="billing", tenant_id=OTHER_TENANT)
    response = await client.get(DEFAULT_PREFIX, params={"limit": "500"}, headers=READER)
    assert response.status_code == 200, response.text
    listed = {item["dead_letter_id"] for item in response.json()["items"]}
    assert mine <= listed
    assert other_tenant not in listed  # the principal's tenant still bounds the list
    consumers = {item["consumer"] for item in response.json()["items"]}
    assert {"coaching", "billing"} <= consumers


async def test_resolve_then_409_and_replay_states(
    client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    dead_letter_id = await seed(dispatch_pool)
    url = f"{DEFAULT_PREFIX}/{dead_letter_id}"

    replayed = await client.post(f"{url}/replay", json={"replayed_by": "alice"}, headers=WRITER)
    assert replayed.status_code == 200
    assert replayed.json()["replay_status"] == "pending"
    assert replayed.json()["replayed_by"] == "alice"

    body = {"resolved_by": "alice", "resolution_note": "fixed upstream"}
    resolved = await client.post(f"{url}/resolve", json=body, headers=WRITER)
    assert resolved.status_code == 200
    assert resolved.json()["resolved_by"] == "alice"
    assert resolved.json()["resolution_note"] == "fixed upstream"
    assert resolved.json()["resolved_at"] is not None

    again = await client.post(f"{url}/resolve", json={"resolved_by": "bob"}, headers=WRITER)
    assert again.status_code == 409
    assert "already resolved" in again.json()["detail"]
    late_replay = await client.post(f"{url}/replay", json={"replayed_by": "bob"}, headers=WRITER)
    assert late_replay.status_code == 409

    shown = await client.get(url, headers=READER)
    assert shown.status_code == 200
    assert shown.json()["resolved_by"] == "alice"
    assert shown.json()["envelope"]["payload"] == {"n": 1}

    missing = await client.get(f"{DEFAULT_PREFIX}/{new_id('dlq')}", headers=READER)
    assert missing.status_code == 404


async def test_openapi_declares_a_model_for_every_route_and_status(app: FastAPI) -> None:
    document = app.openapi()
    for call in route_calls(app):
        operation = document["paths"][call.path][call.method.lower()]
        expected = {"200", "401", "422", "503"}
        if call.has_id:
            expected.add("404")
        if call.method == "POST":
            expected |= {"403", "409"}
        assert expected <= set(operation["responses"]), (call, operation["responses"])
        for code, response in operation["responses"].items():
            schema = response["content"]["application/json"]["schema"]
            assert "$ref" in schema, (call, code, schema)


# --------------------------------------------------------------------------- fuzzing

#: Raised by ``nox -s fuzz`` (HOSTILE_EXAMPLES).
FUZZ_EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "40"))


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Requests-style keyword arguments from schemathesis, for httpx."""
    out = {k: kwargs[k] for k in ("method", "url", "headers", "params") if k in kwargs}
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    if "data" in kwargs:
        data = kwargs["data"]
        out["content" if isinstance(data, bytes | str) else "data"] = data
    return out


async def test_schemathesis_finds_no_server_error(
    app: FastAPI, client: httpx.AsyncClient, dispatch_pool: asyncpg.Pool
) -> None:
    await seed(dispatch_pool, resolved=True)
    for _ in range(3):
        await seed(dispatch_pool)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]

    async def send(kwargs: dict[str, Any]) -> httpx.Response:
        return await client.request(**_httpx_kwargs(kwargs))

    def fuzz(strategy: Any) -> None:
        # Runs in a worker thread; each request is sent on the test's event loop, where
        # the pool lives.
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=WRITER)
            response = anyio.from_thread.run(send, kwargs)
            case.validate_response(response, checks=checks)

        try:
            run()
        except schemathesis.errors.FailureGroup as exc:
            # A BaseExceptionGroup, which would take anyio's test runner down with it.
            raise AssertionError(str(exc)) from exc

    for operation in operations:
        strategies = [operation.as_strategy(mode) for mode in schemathesis.GenerationMode]
        if "{dead_letter_id}" in operation.path:
            # Reach the handlers with a row of their own that exists: 200, then 409.
            active = await seed(dispatch_pool)
            strategies.append(operation.as_strategy(path_parameters={"dead_letter_id": active}))
        else:
            strategies.append(operation.as_strategy(query={"consumer": "coaching"}))
        for strategy in strategies:
            await anyio.to_thread.run_sync(fuzz, strategy)
