"""Every ```python block in docs/ runs here, so the docs cannot rot.

Each page runs in a fresh, migrated database: its blocks run in order in one namespace,
as a reader would type them into ``python -m asyncio`` (top-level ``await`` allowed).
The prelude of every page:

``pool``        an asyncpg pool on the page's database (the ``dispatch_pool`` fixture)
``dispatcher``  a Dispatcher on it: producer ``tests``, tenant ``tnt_tests``
``DATABASE_URL`` (environment) the DSN of the page's database

A block that defines ``test_*`` coroutine functions (the testing guide) has them called
afterwards, each with fixtures of its own (a fresh database, as under pytest) passed by
parameter name: ``dispatch_dsn``, ``dispatch_pool``, ``dispatcher``. Blocks fenced
```` ```python fragment ```` are only compiled: they stand for code that cannot run here
(a server's entry point, a global provider). Other fences (``console``, ``sql``, ...)
are not Python; the SQL of the operations guide's restore remedy runs in its own test.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from dispatch_aio import (
    Consumer,
    ConsumerState,
    Dispatcher,
    Event,
    HorizonError,
    Registry,
    SchemaNotMigratedError,
)
from dispatch_aio.pytest_plugin import TestPostgres
from dispatch_aio.testing import drain

from .helpers import locked_payload, uid

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = [
    "getting-started.md",
    "contracts.md",
    "publishing.md",
    "consuming.md",
    "operations.md",
    "observability.md",
    "testing.md",
    "cross-service.md",
    "adr/0001-transaction-id-visibility.md",
    "adr/0002-per-subject-order.md",
    "adr/0003-outcome-commits.md",
    "adr/0004-notify-coalescing.md",
    "adr/0005-failure-classes.md",
    "adr/0006-partitioned-reads-above-the-horizon.md",
    "adr/0007-payloads-checked-once.md",
]
#: Fragments are the exception: each one is code that cannot run in a test.
MAX_FRAGMENTS = 4
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    fragment: bool
    source: str

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    text = (DOCS / page).read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        words = match["info"].split()
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                language=words[0] if words else "",
                fragment="fragment" in words[1:],
                source=textwrap.dedent(match["body"]),
            )
        )
    return found


def python_pages() -> list[str]:
    pages = [p for p in PAGES if (DOCS / p).is_file()]  # missing: see test_every_page_exists
    return [p for p in pages if any(b.language == "python" and not b.fragment for b in blocks(p))]


def compile_block(block: Block) -> Any:
    return compile(
        block.source, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )


def test_every_page_exists() -> None:
    missing = [p for p in PAGES if not (DOCS / p).is_file()]
    assert missing == []
    assert sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")) == sorted(PAGES)


def test_fragments_are_few_and_compile() -> None:
    pages = [p for p in PAGES if (DOCS / p).is_file()]
    fragments = [b for p in pages for b in blocks(p) if b.language == "python" and b.fragment]
    assert len(fragments) <= MAX_FRAGMENTS, [b.where for b in fragments]
    for block in fragments:
        compile_block(block)


def test_the_guides_have_examples() -> None:
    assert set(python_pages()) >= {
        "getting-started.md",
        "contracts.md",
        "publishing.md",
        "consuming.md",
        "operations.md",
        "observability.md",
        "testing.md",
    }


@pytest.mark.parametrize("page", python_pages())
async def test_page_examples_run(
    page: str,
    dispatch_pool: asyncpg.Pool,
    dispatch_dsn: str,
    dispatcher: Dispatcher,
    dispatch_postgres: TestPostgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", dispatch_dsn)
    fixtures: dict[str, Any] = {
        "dispatch_pool": dispatch_pool,
        "dispatch_dsn": dispatch_dsn,
        "dispatcher": dispatcher,
    }
    # A module of its own, as a REPL's __main__ is: pydantic registers a generic model
    # parametrized at top level (Event[OrderPlaced]) in the module that did it.
    module = types.ModuleType("docs")
    monkeypatch.setitem(sys.modules, "docs", module)
    namespace: dict[str, Any] = module.__dict__
    namespace.update({"pool": dispatch_pool, **fixtures})
    called: set[str] = set()
    try:
        for block in blocks(page):
            if block.language != "python" or block.fragment:
                continue
            result = eval(compile_block(block), namespace)  # our own docs' code
            if inspect.iscoroutine(result):
                await result
            for name, value in list(namespace.items()):
                is_test = name.startswith("test_") and inspect.iscoroutinefunction(value)
                if is_test and name not in called:
                    called.add(name)
                    await _run_test(value, dispatch_postgres)
    finally:
        await _clean_up(namespace, dispatch_pool)
    if page == "testing.md":
        assert called, "the testing guide's example tests did not run"


async def _run_test(test: Any, postgres: TestPostgres) -> None:
    """Call a test function of the docs as pytest would: fresh fixtures of its own."""
    database = await postgres.create_database()
    dsn = postgres.dsn(database)
    try:
        async with asyncpg.create_pool(dsn, min_size=2, max_size=20) as pool:
            fixtures: dict[str, Any] = {
                "dispatch_dsn": dsn,
                "dispatch_pool": pool,
                "dispatcher": Dispatcher(pool, producer="tests", tenant_id="tnt_tests"),
            }
            await test(**{p: fixtures[p] for p in inspect.signature(test).parameters})
    finally:
        await postgres.drop_database(database)


async def _clean_up(namespace: dict[str, Any], fixture_pool: asyncpg.Pool) -> None:
    for value in list(namespace.values()):
        if isinstance(value, Consumer) and value.state is not ConsumerState.NEW:
            await value.aclose()
    for value in list(namespace.values()):
        if isinstance(value, asyncpg.Pool) and value is not fixture_pool and not value._closed:
            await value.close()


def sql_blocks(page: str) -> list[Block]:
    return [b for b in blocks(page) if b.language == "sql"]


async def test_restore_remedy_of_the_operations_guide(
    dispatch_pool: asyncpg.Pool, dispatcher: Dispatcher, dispatch_registry: Registry
) -> None:
    """A logical restore into a younger cluster, simulated; then the guide's remedy."""
    [remedy] = [b for b in sql_blocks("operations.md") if "dispatcher_cursor" in b.source]

    def build() -> Consumer:
        consumer = Consumer(dispatch_pool, name="coaching", registry=dispatch_registry)

        @consumer.on("credit.locked")
        async def on_locked(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO handled VALUES ($1)", event.event_id)

        return consumer

    await dispatch_pool.execute("CREATE TABLE handled (event_id text PRIMARY KEY)")
    subjects = [uid("crr") for _ in range(3)]
    for subject in subjects * 2:
        await dispatcher.publish("credit.locked", locked_payload(), subject=subject, actor="a:b")
    assert (await drain(build())).handled == 6
    for subject in subjects:
        await dispatcher.publish("credit.locked", locked_payload(), subject=subject, actor="a:b")
    # The old cluster's transaction ids, far ahead of this one's.
    await dispatch_pool.execute(
        "UPDATE dispatcher_event SET xid = (xid::text::bigint + 1000000000000)::text::xid8;"
        "UPDATE dispatcher_cursor SET last_xid = "
        "(last_xid::text::bigint + 1000000000000)::text::xid8"
    )
    with pytest.raises(HorizonError, match="operations guide"):
        await drain(build())

    async with dispatch_pool.acquire() as conn:
        await conn.execute(remedy.source)

    result = await drain(build())
    assert (result.handled, result.dedup_hits, result.dead_lettered) == (3, 6, 0)
    assert await dispatch_pool.fetchval("SELECT count(*) FROM handled") == 9
    # Published after the remedy: delivered as usual.
    await dispatcher.publish("credit.locked", locked_payload(), subject=subjects[0], actor="a:b")
    assert (await drain(build())).handled == 1


async def test_operations_guide_sql_runs(dispatch_pool: asyncpg.Pool) -> None:
    """The other SQL of the operations guide (the horizon holders query) runs as written."""
    for block in sql_blocks("operations.md"):
        if "dispatcher_cursor" in block.source:
            continue
        async with dispatch_pool.acquire() as conn:
            await conn.execute(block.source)


# --------------------------------------------------------------------------- the README app

ROOT = DOCS.parent
APP_FILE = ROOT / "examples" / "fastapi_app" / "app.py"


def readme_app() -> str:
    """The README's FastAPI app: the block fenced ```python examples/fastapi_app/app.py."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = [
        textwrap.dedent(m["body"])
        for m in _FENCE.finditer(text)
        if m["info"].split()[:2] == ["python", "examples/fastapi_app/app.py"]
    ]
    assert len(found) == 1, "the README shows the FastAPI app exactly once"
    return found[0]


def test_the_readme_app_is_the_example_file() -> None:
    assert readme_app() == APP_FILE.read_text(encoding="utf-8")


async def test_the_readme_app_runs_as_written(
    dispatch_dsn: str, dispatch_postgres: TestPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrated database, the app's tables, its lifespan, a request, the worker, the DLQ."""
    monkeypatch.setenv("DATABASE_URL", dispatch_dsn)
    monkeypatch.setenv("OPERATOR_TOKEN", "s3cret")
    namespace: dict[str, Any] = {"__name__": "readme_app"}
    exec(
        compile(readme_app(), "README.md (app)", "exec", dont_inherit=True), namespace
    )  # our own README's code
    await namespace["create_tables"]()
    # Its model is a faithful view of the bundled schema of credit.locked.
    assert Registry.load().compare_model("credit.locked", namespace["CreditLocked"]) == []
    app = namespace["app"]
    lesson, person = uid("les"), uid("per")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http,
    ):
        pool: asyncpg.Pool = app.state.pool
        placed = await http.post(
            f"/lessons/{lesson}/lock", json={"person_id": person, "credits": 2}
        )
        assert placed.status_code == 201, placed.text
        refused = await http.post("/lessons/42/lock", json={"person_id": person, "credits": 2})
        assert refused.status_code == 422
        assert "$.payload.lesson_id" in refused.json()["detail"]
        assert await pool.fetchval("SELECT count(*) FROM reservation") == 1  # rolled back

        result = await drain(namespace["worker"](pool))
        assert (result.handled, result.dead_lettered) == (1, 0)
        assert await pool.fetchval("SELECT credits FROM lesson_hold WHERE lesson_id = $1", lesson)
        [event_id] = await pool.fetchval("SELECT array_agg(event_id) FROM dispatcher_event")
        assert placed.json() == {"event_id": event_id}

        dlq = "/api/dispatcher/v1/dlq"
        assert (await http.get(dlq, params={"consumer": "coaching"})).status_code == 401
        listed = await http.get(
            dlq, params={"consumer": "coaching"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert listed.status_code == 200
        assert listed.json()["items"] == []

    # A database nobody migrated: the start-up fails, naming the command to run.
    database = await dispatch_postgres.create_database(migrated=False)
    try:
        monkeypatch.setenv("DATABASE_URL", dispatch_postgres.dsn(database))
        with pytest.raises(SchemaNotMigratedError, match="dispatch-aio migrate"):
            async with app.router.lifespan_context(app):
                pass
    finally:
        await dispatch_postgres.drop_database(database)
