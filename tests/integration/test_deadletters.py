"""The dead-letter service on a real PostgreSQL: paging, tenants, index use, races, replay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from dispatch_aio import (
    DeadLetter,
    DeadLetterAlreadyResolvedError,
    DeadLetterNotFoundError,
    DeadLetters,
    SchemaNotMigratedError,
    UsageError,
    migrate,
)
from dispatch_aio._deadletters import MAX_PAGE_SIZE
from dispatch_aio._sql import queries, replay_channel_for

from .helpers import seed_dead_letter
from .helpers import uid as new_id


async def seed(db: asyncpg.Pool | asyncpg.Connection, **fields: Any) -> str:
    """A dead letter with this module's payload."""
    return await seed_dead_letter(db, **{"payload": {"reservation_id": "res_1"}, **fields})


pytestmark = pytest.mark.anyio

T0 = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)


async def row(pool: asyncpg.Pool, dead_letter_id: str) -> dict[str, Any]:
    record = await pool.fetchrow(
        "SELECT * FROM dispatcher_dead_letter WHERE dead_letter_id = $1", dead_letter_id
    )
    assert record is not None
    return dict(record)


@pytest.fixture
def service(dispatch_pool: asyncpg.Pool) -> DeadLetters:
    return DeadLetters(dispatch_pool)


@pytest.fixture
async def replay_notifications(dispatch_dsn: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Payloads of the public schema's replay channel, in the order they were sent."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(dispatch_dsn)
    channel = replay_channel_for("public")
    await conn.add_listener(channel, lambda *args: queue.put_nowait(args[3]))
    try:
        yield queue
    finally:
        await conn.close()


# --------------------------------------------------------------------------- list


async def test_list_is_newest_first_and_active_only_by_default(
    service: DeadLetters, dispatch_pool: asyncpg.Pool
) -> None:
    old = await seed(dispatch_pool, created_at=T0)
    new = await seed(dispatch_pool, created_at=T0 + timedelta(minutes=1))
    resolved = await seed(dispatch_pool, created_at=T0 + timedelta(minutes=2), resolved=True)
    await seed(dispatch_pool, consumer="warehouse", created_at=T0 + timedelta(minutes=3))

    page = await service.list("coaching")
    assert [d.dead_letter_id for d in page.items] == [new, old]
    assert page.next_cursor is None
    everything = await service.list("coaching", include_resolved=True)
    assert [d.dead_letter_id for d in everything.items] == [resolved, new, old]

    first = page.items[0]
    assert isinstance(first, DeadLetter)
    assert first.envelope["payload"] == {"reservation_id": "res_1"}
    assert first.error_type == "ValueError"
    assert first.attempts == 4
    assert first.created_at == T0 + timedelta(minutes=1)
    assert not first.is_resolved


async def test_keyset_pagination_visits_every_row_once_in_order(
    service: DeadLetters, dispatch_pool: asyncpg.Pool
) -> None:
    # Ties on created_at are broken by the id, so rows sharing a timestamp are not lost.
    keys = []
    for i in range(11):
        created_at = T0 + timedelta(seconds=i // 2)
        keys.append((created_at, await seed(dispatch_pool, created_at=created_at)))
    expected = [dead_letter_id for _, dead_letter_id in sorted(keys, reverse=True)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await service.list("coaching", limit=3, before=cursor)
        pages += 1
        seen += [d.dead_letter_id for d in page.items]
        if pages == 1:
            # A newer row arriving between pages does not shift the following pages.
            await seed(dispatch_pool, created_at=T0 + timedelta(hours=1))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected
    assert pages == 4


async def test_last_full_page_has_no_cursor(
    service: DeadLetters, dispatch_pool: asyncpg.Pool
) -> None:
    for i in range(4):
        await seed(dispatch_pool, created_at=T0 + timedelta(seconds=i))
    first = await service.list("coaching", limit=2)
    assert first.next_cursor is not None
    second = await service.list("coaching", limit=2, before=first.next_cursor)
    assert len(second.items) == 2
    assert second.next_cursor is None


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1, True])
async def test_list_refuses_bad_limits(service: DeadLetters, limit: int) -> None:
    with pytest.raises(UsageError, match="limit"):
        await service.list("coaching", limit=limit)


@pytest.mark.parametrize(
    "cursor", ["", "garbage!", "bm90IGEgY3Vyc29y", "MjAyNi0wNS0wOVQxMjowMDowMHxkbHFfeA"]
)
async def test_list_refuses_foreign_cursors(service: DeadLetters, cursor: str) -> None:
    with pytest.raises(UsageError, match="invalid cursor"):
        await service.list("coaching", before=cursor)


async def test_active_listing_uses_the_partial_index(dispatch_pool: asyncpg.Pool) -> None:
    # Enough rows (three consumers, half resolved) that reading a page in index order
    # beats sorting, as on a real table.
    await dispatch_pool.execute(
        """INSERT INTO dispatcher_dead_letter (
               dead_letter_id, consumer, event_id, event_type, tenant_id, envelope,
               error_type, error_message, attempts, created_at, resolved_at)
           SELECT 'dlq_' || gen_random_uuid(), 'c' || (i % 3), 'evt_' || i, 'credit.locked',
                  'tnt_a', '{}', 'ValueError', 'boom', 4,
                  $1::timestamptz + i * interval '1 second',
                  CASE WHEN i % 2 = 0 THEN now() END
           FROM generate_series(1, 6000) AS i""",
        T0,
    )
    query = queries("public").dead_letters_list_active
    cursor = f"'{(T0 + timedelta(seconds=3000)).isoformat()}', '{new_id('dlq')}'"
    async with dispatch_pool.acquire() as conn:
        await conn.execute("ANALYZE dispatcher_dead_letter")
        await conn.execute(f"PREPARE list_active AS {query}")
        # Both plans matter: asyncpg prepares statements, and after a few executions
        # PostgreSQL may switch a prepared statement to its generic plan.
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            for keyset in ("NULL, NULL", cursor):
                explain = await conn.fetch(
                    f"EXPLAIN EXECUTE list_active('c1', {keyset}, 'tnt_a', 51)"
                )
                plan = "\n".join(r[0] for r in explain)
                assert "Index Scan using dispatcher_dead_letter_active_per_consumer" in plan, plan
                # The keyset is an index condition and the index order is the ORDER BY.
                index_cond = next(line for line in plan.splitlines() if "Index Cond" in line)
                assert "ROW(created_at, dead_letter_id) <" in index_cond, plan
                assert "Sort" not in plan, plan
                if mode == "force_generic_plan":
                    assert "$1" in index_cond, plan
        await conn.execute("RESET plan_cache_mode")
        await conn.execute("DEALLOCATE list_active")


# --------------------------------------------------------------------------- get


async def test_get_returns_the_row(service: DeadLetters, dispatch_pool: asyncpg.Pool) -> None:
    dead_letter_id = await seed(dispatch_pool)
    found = await service.get(dead_letter_id)
    assert found.dead_letter_id == dead_letter_id
    assert found.consumer == "coaching"
    assert found.envelope["event_type"] == "credit.locked"


async def test_get_unknown_and_malformed_ids(service: DeadLetters) -> None:
    unknown = new_id("dlq")
    with pytest.raises(DeadLetterNotFoundError) as info:
        await service.get(unknown)
    assert info.value.dead_letter_id == unknown
    for malformed in ["dlq_123", new_id("evt"), "DLQ_" + unknown[4:], "", "dlq_\x00"]:
        with pytest.raises(UsageError, match="not a dead-letter id"):
            await service.get(malformed)


# --------------------------------------------------------------------------- tenants


async def test_another_tenants_rows_behave_as_missing(
    service: DeadLetters, dispatch_pool: asyncpg.Pool
) -> None:
    mine = await seed(dispatch_pool, tenant_id="tnt_a", created_at=T0)
    theirs = await seed(dispatch_pool, tenant_id="tnt_b", created_at=T0 + timedelta(seconds=1))
    untenanted = await seed(dispatch_pool, tenant_id=None, created_at=T0 + timedelta(seconds=2))
    before = await row(dispatch_pool, theirs)

    page = await service.list("coaching", tenant_id="tnt_a", include_resolved=True)
    assert [d.dead_letter_id for d in page.items] == [mine]
    everyone = await service.list("coaching")
    assert [d.dead_letter_id for d in everyone.items] == [untenanted, theirs, mine]

    for other in (theirs, untenanted):
        with pytest.raises(DeadLetterNotFoundError):
            await service.get(other, tenant_id="tnt_a")
        with pytest.raises(DeadLetterNotFoundError):
            await service.resolve(other, resolved_by="ops", tenant_id="tnt_a")
        with pytest.raises(DeadLetterNotFoundError):
            await service.replay(other, replayed_by="ops", tenant_id="tnt_a")
    assert await row(dispatch_pool, theirs) == before

    assert await service.replay_all("coaching", replayed_by="ops", tenant_id="tnt_a") == 1
    assert (await row(dispatch_pool, mine))["replay_status"] == "pending"
    assert await row(dispatch_pool, theirs) == before
    assert (await row(dispatch_pool, untenanted))["replay_status"] is None
    resolved = await service.resolve(mine, resolved_by="ops", tenant_id="tnt_a")
    assert resolved.resolved_by == "ops"


# --------------------------------------------------------------------------- resolve


async def test_resolve_is_one_shot(service: DeadLetters, dispatch_pool: asyncpg.Pool) -> None:
    dead_letter_id = await seed(dispatch_pool)
    resolved = await service.resolve(dead_letter_id, resolved_by="alice", note="fixed upstream")
    assert resolved.is_resolved
    assert resolved.resolved_by == "alice"
    assert resolved.resolution_note == "fixed upstream"
    stored = await row(dispatch_pool, dead_letter_id)
    assert stored["resolved_at"] == resolved.resolved_at

    with pytest.raises(DeadLetterAlreadyResolvedError):
        await service.resolve(dead_letter_id, resolved_by="bob")
    assert (await row(dispatch_pool, dead_letter_id))["resolved_by"] == "alice"
    with pytest.raises(DeadLetterNotFoundError):
        await service.resolve(new_id("dlq"), resolved_by="bob")
    with pytest.raises(UsageError, match="resolved_by"):
        await service.resolve(dead_letter_id, resolved_by="")


async def test_two_concurrent_resolves_exactly_one_wins(
    service: DeadLetters, dispatch_pool: asyncpg.Pool
) -> None:
    for _ in range(20):
        dead_letter_id = await seed(dispatch_pool)
        outcomes = await asyncio.gather(
            service.resolve(dead_letter_id, resolved_by="alice"),
            service.resolve(dead_letter_id, resolved_by="bob"),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, DeadLetter)]
        losers = [o for o in outcomes if isinstance(o, DeadLetterAlreadyResolvedError)]
        assert len(winners) == 1, outcomes
        assert len(losers) == 1, outcomes
        assert (await row(dispatch_pool, dead_letter_id))["resolved_by"] == winners[0].resolved_by


async def test_resolve_cancels_a_pending_replay(
    service: DeadLetters, dispatch_pool: asyncpg.Pool
) -> None:
    dead_letter_id = await seed(dispatch_pool)
    await service.replay(dead_letter_id, replayed_by="alice")
    resolved = await service.resolve(dead_letter_id, resolved_by="bob")
    assert resolved.replay_status is None
    assert resolved.replayed_by == "alice"  # the request stays on record


# --------------------------------------------------------------------------- replay


async def test_replay_marks_pending_and_notifies_the_consumer(
    service: DeadLetters,
    dispatch_pool: asyncpg.Pool,
    replay_notifications: asyncio.Queue[str],
) -> None:
    dead_letter_id = await seed(dispatch_pool, replay_status="failed", replay_error="still broken")
    replayed = await service.replay(dead_letter_id, replayed_by="alice")
    assert replayed.replay_status == "pending"
    assert replayed.replayed_by == "alice"
    assert replayed.replay_requested_at is not None
    assert replayed.replay_error is None
    assert not replayed.is_resolved
    assert await asyncio.wait_for(replay_notifications.get(), 10) == "coaching"

    # Idempotent: a second request leaves the pending row as it was.
    again = await service.replay(dead_letter_id, replayed_by="bob")
    assert again.replayed_by == "alice"
    assert again.replay_requested_at == replayed.replay_requested_at
    assert (await row(dispatch_pool, dead_letter_id))["replayed_by"] == "alice"


async def test_resolved_rows_cannot_be_replayed_and_nothing_is_notified(
    service: DeadLetters,
    dispatch_pool: asyncpg.Pool,
    replay_notifications: asyncio.Queue[str],
) -> None:
    resolved = await seed(dispatch_pool, consumer="billing", resolved=True)
    before = await row(dispatch_pool, resolved)
    with pytest.raises(DeadLetterAlreadyResolvedError):
        await service.replay(resolved, replayed_by="alice")
    with pytest.raises(DeadLetterNotFoundError):
        await service.replay(new_id("dlq"), replayed_by="alice")
    assert await row(dispatch_pool, resolved) == before

    # Notifications arrive in commit order: the first one is this later replay's, so the
    # refused replay sent none.
    await service.replay(await seed(dispatch_pool, consumer="warehouse"), replayed_by="alice")
    assert await asyncio.wait_for(replay_notifications.get(), 10) == "warehouse"


async def test_replay_all_marks_active_rows_once_and_notifies(
    service: DeadLetters,
    dispatch_pool: asyncpg.Pool,
    replay_notifications: asyncio.Queue[str],
) -> None:
    locked = [await seed(dispatch_pool) for _ in range(3)]
    released = await seed(dispatch_pool, event_type="credit.released")
    failed = await seed(dispatch_pool, replay_status="failed", replay_error="x")
    resolved = await seed(dispatch_pool, resolved=True)
    other_consumer = await seed(dispatch_pool, consumer="warehouse")

    marked = await service.replay_all("coaching", replayed_by="alice", event_type="credit.locked")
    assert marked == 4  # three locked + the earlier failed replay, also credit.locked
    assert await asyncio.wait_for(replay_notifications.get(), 10) == "coaching"
    for dead_letter_id in [*locked, failed]:
        stored = await row(dispatch_pool, dead_letter_id)
        assert (stored["replay_status"], stored["replayed_by"]) == ("pending", "alice")
        assert stored["replay_error"] is None
    assert (await row(dispatch_pool, released))["replay_status"] is None
    assert (await row(dispatch_pool, resolved))["replay_status"] is None
    assert (await row(dispatch_pool, other_consumer))["replay_status"] is None

    # Pending rows are not marked (or counted) twice; the rest of the consumer is.
    assert await service.replay_all("coaching", replayed_by="bob") == 1
    assert (await row(dispatch_pool, locked[0]))["replayed_by"] == "alice"
    assert await service.replay_all("coaching", replayed_by="bob") == 0


# --------------------------------------------------------------------------- schemas, input


async def test_other_schema_uses_its_own_tables_and_channel(
    dispatch_dsn: str, dispatch_pool: asyncpg.Pool
) -> None:
    await migrate(dispatch_pool, "ops")
    queue: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(dispatch_dsn)
    await listener.add_listener(replay_channel_for("ops"), lambda *args: queue.put_nowait(args[3]))
    try:
        dead_letter_id = await seed(dispatch_pool, schema="ops")
        service = DeadLetters(dispatch_pool, "ops")
        assert [d.dead_letter_id for d in (await service.list("coaching")).items] == [
            dead_letter_id
        ]
        assert (await DeadLetters(dispatch_pool).list("coaching")).items == ()
        await service.replay(dead_letter_id, replayed_by="alice")
        assert await asyncio.wait_for(queue.get(), 10) == "coaching"
    finally:
        await listener.close()


async def test_unmigrated_schema_names_the_command(dispatch_pool: asyncpg.Pool) -> None:
    with pytest.raises(SchemaNotMigratedError, match="dispatch-aio migrate"):
        await DeadLetters(dispatch_pool, "nowhere").list("coaching")


async def test_text_postgres_cannot_store_is_refused(service: DeadLetters) -> None:
    with pytest.raises(UsageError, match="NUL"):
        await service.list("coa\x00ching")
    with pytest.raises(UsageError, match="surrogate"):
        await service.replay_all("coaching", replayed_by="\ud800")
    with pytest.raises(UsageError, match="tenant_id"):
        await service.list("coaching", tenant_id="")
