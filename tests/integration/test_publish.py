"""Transactional publish against a real PostgreSQL: visibility, validation, storage, NOTIFY."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import pydantic
import pytest
import uuid_utils

from dispatch_aio import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ConfigurationError,
    ContractError,
    Dispatcher,
    Envelope,
    EventSpec,
    InvalidEnvelopeError,
    InvalidIdentifierError,
    InvalidPayloadError,
    NotInTransactionError,
    PayloadTooLargeError,
    Registry,
    SchemaNotMigratedError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
    UsageError,
    migrate,
)
from dispatch_aio._registry import ENVELOPE_SCHEMA_PATH, REGISTRY_FILENAME
from dispatch_aio.pytest_plugin import TestPostgres

pytestmark = pytest.mark.anyio

CHANNEL = "dispatcher_event_inserted"
ACTOR = "system:revenue"
WAIT = 10.0  # upper bound for anything awaited from the server


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid_utils.uuid7()}"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load()


def locked_payload(registry: Registry, person_id: str | None = None) -> dict[str, Any]:
    """A valid credit.locked payload with fresh ids."""
    payload = registry.example_payload("credit.locked")
    payload["credit_reservation_id"] = _id("crr")
    payload["lesson_id"] = _id("les")
    payload["person_id"] = person_id or _id("per")
    return payload


async def count_events(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM dispatcher_event"))


# --------------------------------------------------------------------------- transactions


async def test_rolled_back_transaction_leaves_no_event(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    async with dispatch_pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        subject = _id("per")
        await dispatcher.publish(
            "credit.locked",
            locked_payload(registry, subject),
            subject=subject,
            actor=ACTOR,
            conn=conn,
        )
        # Visible to its own transaction before commit...
        assert await conn.fetchval("SELECT count(*) FROM dispatcher_event") == 1
        await transaction.rollback()
    # ...and gone after the rollback.
    assert await count_events(dispatch_pool) == 0


async def test_committed_transaction_leaves_exactly_one_event(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    subject = _id("per")
    payload = locked_payload(registry, subject)
    correlation = _id("evt")
    async with dispatch_pool.acquire() as conn, conn.transaction():
        envelope = await dispatcher.publish(
            "credit.locked",
            payload,
            subject=subject,
            actor=ACTOR,
            conn=conn,
            correlation_id=correlation,
            causation_id=correlation,
        )
        # Not visible to anyone else until the caller commits.
        assert await count_events(dispatch_pool) == 0
    rows = await dispatch_pool.fetch("SELECT * FROM dispatcher_event")
    assert len(rows) == 1
    row = rows[0]
    assert row["event_id"] == envelope.event_id
    assert envelope.event_id.startswith("evt_")
    assert row["event_type"] == "credit.locked"
    assert row["schema_version"] == envelope.schema_version == 1
    assert row["tenant_id"] == envelope.tenant_id == "tnt_tests"
    assert row["producer"] == envelope.producer == "tests"
    assert row["subject"] == subject
    assert row["actor"] == ACTOR
    assert row["correlation_id"] == row["causation_id"] == correlation
    assert row["occurred_at"] == envelope.occurred_at
    assert json.loads(row["payload"]) == payload == envelope.payload


async def test_rollback_to_savepoint_discards_the_event(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    async with dispatch_pool.acquire() as conn, conn.transaction():
        kept = await dispatcher.publish(
            "credit.locked", locked_payload(registry), subject=_id("per"), actor=ACTOR, conn=conn
        )
        savepoint = conn.transaction()
        await savepoint.start()
        await dispatcher.publish(
            "credit.locked",
            locked_payload(registry),
            subject=_id("per"),
            actor=ACTOR,
            conn=conn,
        )
        await savepoint.rollback()
    ids = [
        r["event_id"] for r in await dispatch_pool.fetch("SELECT event_id FROM dispatcher_event")
    ]
    assert ids == [kept.event_id]


async def test_publish_on_a_connection_outside_a_transaction_raises(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    async with dispatch_pool.acquire() as conn:
        with pytest.raises(NotInTransactionError, match="transaction"):
            await dispatcher.publish(
                "credit.locked",
                locked_payload(registry),
                subject=_id("per"),
                actor=ACTOR,
                conn=conn,
            )
        with pytest.raises(NotInTransactionError):
            await dispatcher.publish_many(
                [
                    {
                        "event_type": "credit.locked",
                        "payload": locked_payload(registry),
                        "subject": _id("per"),
                        "actor": ACTOR,
                    }
                ],
                conn=conn,
            )
    assert await count_events(dispatch_pool) == 0


async def test_publish_without_conn_commits_in_its_own_transaction(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    subject = _id("per")
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(registry, subject), subject=subject, actor=ACTOR
    )
    # Committed: another connection sees it at once.
    async with dispatch_pool.acquire() as other:
        rows = await other.fetch("SELECT event_id, subject FROM dispatcher_event")
    assert [(r["event_id"], r["subject"]) for r in rows] == [(envelope.event_id, subject)]


async def test_publish_without_conn_and_without_pool_is_a_usage_error(
    registry: Registry,
) -> None:
    dispatcher = Dispatcher(None, producer="tests", tenant_id="tnt_tests", registry=registry)
    with pytest.raises(UsageError, match="conn="):
        await dispatcher.publish(
            "credit.locked", locked_payload(registry), subject=_id("per"), actor=ACTOR
        )


# --------------------------------------------------------------------------- bad input

Mutation = Callable[[dict[str, Any]], None]


def _set_payload(key: str, value: Any) -> Mutation:
    def mutate(kwargs: dict[str, Any]) -> None:
        kwargs["payload"][key] = value

    return mutate


def _del_payload(key: str) -> Mutation:
    def mutate(kwargs: dict[str, Any]) -> None:
        del kwargs["payload"][key]

    return mutate


def _set(key: str, value: Any) -> Mutation:
    def mutate(kwargs: dict[str, Any]) -> None:
        kwargs[key] = value

    return mutate


_UUID7 = "019dd49c-ae04-726a-8f7f-021e87f3ba00"

# (id, mutation, error class, JSON path or None)
BAD_INPUTS: list[tuple[str, Mutation, type[ContractError], str | None]] = [
    ("unknown-type", _set("event_type", "credit.teleported"), UnknownEventTypeError, None),
    ("unknown-version", _set("schema_version", 99), UnknownSchemaVersionError, None),
    ("missing-field", _del_payload("person_id"), InvalidPayloadError, "$.payload.person_id"),
    ("extra-field", _set_payload("mood", "happy"), InvalidPayloadError, "$.payload.mood"),
    (
        "ill-typed-field",
        _set_payload("locked_credits", "1"),
        InvalidPayloadError,
        "$.payload.locked_credits",
    ),
    (
        "out-of-range-field",
        _set_payload("locked_credits", 0),
        InvalidPayloadError,
        "$.payload.locked_credits",
    ),
    (
        "wrong-id-prefix",
        _set_payload("person_id", f"usr_{_UUID7}"),
        InvalidPayloadError,
        "$.payload.person_id",
    ),
    (
        "id-not-uuid7",
        _set_payload("person_id", "per_019dd49c-ae04-426a-8f7f-021e87f3ba00"),
        InvalidPayloadError,
        "$.payload.person_id",
    ),
    (
        "payload-timestamp-impossible-day",
        _set_payload("locked_at", "2026-02-31T16:00:00Z"),
        InvalidPayloadError,
        "$.payload.locked_at",
    ),
    (
        "payload-timestamp-no-t",
        _set_payload("locked_at", "2026-05-08 16:00:00Z"),
        InvalidPayloadError,
        "$.payload.locked_at",
    ),
    (
        "payload-timestamp-compact-offset",
        _set_payload("locked_at", "2026-05-08T16:00:00+0200"),
        InvalidPayloadError,
        "$.payload.locked_at",
    ),
    ("payload-not-object", _set("payload", ["a"]), InvalidPayloadError, "$.payload"),
    (
        "naive-occurred-at",
        _set("occurred_at", datetime(2026, 5, 8, 16, 0)),
        InvalidEnvelopeError,
        "$.occurred_at",
    ),
    (
        "string-occurred-at",
        _set("occurred_at", "2026-05-08T16:00:00Z"),
        InvalidEnvelopeError,
        "$.occurred_at",
    ),
    ("subject-not-an-id", _set("subject", "person-42"), InvalidEnvelopeError, "$.subject"),
    ("subject-not-uuid7", _set("subject", "per_42"), InvalidEnvelopeError, "$.subject"),
    ("subject-empty", _set("subject", ""), InvalidEnvelopeError, "$.subject"),
    ("subject-not-str", _set("subject", 42), InvalidEnvelopeError, "$.subject"),
    ("actor-without-kind", _set("actor", "revenue"), InvalidEnvelopeError, "$.actor"),
    ("actor-with-space", _set("actor", "user:jane doe"), InvalidEnvelopeError, "$.actor"),
    (
        "correlation-id-with-space",
        _set("correlation_id", "a b"),
        InvalidEnvelopeError,
        "$.correlation_id",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "error", "path"),
    [pytest.param(m, e, p, id=name) for name, m, e, p in BAD_INPUTS],
)
async def test_bad_input_raises_its_typed_error_and_writes_nothing(
    dispatcher: Dispatcher,
    dispatch_pool: asyncpg.Pool,
    registry: Registry,
    mutate: Mutation,
    error: type[ContractError],
    path: str | None,
) -> None:
    subject = _id("per")
    kwargs: dict[str, Any] = {
        "event_type": "credit.locked",
        "payload": locked_payload(registry, subject),
        "subject": subject,
        "actor": ACTOR,
    }
    mutate(kwargs)
    event_type = kwargs.pop("event_type")
    payload = kwargs.pop("payload")
    # A dispatcher that has built an event of this type already (some checks are done
    # once per type) and a fresh one must refuse alike.
    valid = _id("per")
    dispatcher.build("credit.locked", locked_payload(registry, valid), subject=valid, actor=ACTOR)
    fresh = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_tests", registry=registry)
    errors: list[ContractError] = []
    async with dispatch_pool.acquire() as conn:
        async with conn.transaction():
            with pytest.raises(error) as caught:
                await dispatcher.publish(event_type, payload, conn=conn, **kwargs)
            errors.append(caught.value)
            # Refused before any SQL: the caller's transaction is still usable and commits.
            assert await conn.fetchval("SELECT 1") == 1
        with pytest.raises(error) as caught:  # the same without conn
            await fresh.publish(event_type, payload, **kwargs)
        errors.append(caught.value)
    assert await count_events(dispatch_pool) == 0
    for exc in errors:
        assert getattr(exc, "event_type", None) == event_type
        if path is not None:
            assert isinstance(exc, InvalidPayloadError | InvalidEnvelopeError)
            assert exc.path == path
            assert exc.schema_version == 1
            assert path in str(exc)
            assert event_type in str(exc)


@pytest.mark.parametrize(
    ("producer", "tenant_id", "field"),
    [("Revenue", "tnt_tests", "producer"), ("tests", "sguild", "tenant_id")],
)
def test_producer_or_tenant_outside_the_envelope_contract_is_refused_at_construction(
    registry: Registry, producer: str, tenant_id: str, field: str
) -> None:
    with pytest.raises(ConfigurationError, match=field) as caught:
        Dispatcher(None, producer=producer, tenant_id=tenant_id, registry=registry)
    assert repr(producer if field == "producer" else tenant_id) in str(caught.value)


async def test_aware_non_utc_occurred_at_is_stored_as_utc(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    paris = timezone(timedelta(hours=2))
    when = datetime(2026, 5, 8, 18, 0, 0, 125000, tzinfo=paris)
    subject = _id("per")
    envelope = await dispatcher.publish(
        "credit.locked",
        locked_payload(registry, subject),
        subject=subject,
        actor=ACTOR,
        occurred_at=when,
    )
    assert envelope.occurred_at == when
    assert envelope.occurred_at.utcoffset() == timedelta(0)
    assert envelope.to_json_dict()["occurred_at"] == "2026-05-08T16:00:00.125000Z"
    stored = await dispatch_pool.fetchval("SELECT occurred_at FROM dispatcher_event")
    assert stored == datetime(2026, 5, 8, 16, 0, 0, 125000, tzinfo=UTC)


def _blob_contracts(root: Path, bundled: Path) -> Path:
    """A contracts directory with one event type whose payload holds free text."""
    (root / "event-envelope" / "schema").mkdir(parents=True)
    shutil.copy(bundled / ENVELOPE_SCHEMA_PATH, root / ENVELOPE_SCHEMA_PATH)
    payloads = root / "blob-store" / "schema" / "payloads"
    payloads.mkdir(parents=True)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "blob.stored payload v1",
        "type": "object",
        "additionalProperties": False,
        "required": ["body"],
        "properties": {"body": {"type": "string"}},
        "examples": [{"body": "hello"}],
    }
    (payloads / "blob.stored-v1.json").write_text(json.dumps(schema))
    entry = {
        "contract": "blob-store",
        "producer": "tests",
        "subscribers": ["tests"],
        "current_version": 1,
        "versions": [
            {
                "version": 1,
                "status": "active",
                "payload_schema": "blob-store/schema/payloads/blob.stored-v1.json",
            }
        ],
    }
    registry = {"registry_version": 1, "event_types": {"blob.stored": entry}}
    (root / REGISTRY_FILENAME).write_text(json.dumps(registry))
    return root


async def test_oversize_payload_is_refused_at_the_default_limit(
    dispatch_pool: asyncpg.Pool, registry: Registry, tmp_path: Path
) -> None:
    blobs = Registry.load(_blob_contracts(tmp_path / "contracts", registry.root))
    dispatcher = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_t", registry=blobs)
    assert dispatcher.max_payload_bytes == DEFAULT_MAX_PAYLOAD_BYTES == 256 * 1024
    overhead = len('{"body":""}')
    at_limit = {"body": "x" * (DEFAULT_MAX_PAYLOAD_BYTES - overhead)}
    over = {"body": "x" * (DEFAULT_MAX_PAYLOAD_BYTES - overhead + 1)}
    # Multi-byte text counts in encoded bytes, not characters.
    over_in_bytes = {"body": "é" * (DEFAULT_MAX_PAYLOAD_BYTES // 2)}
    subject = _id("blb")
    for payload in (over, over_in_bytes):
        with pytest.raises(PayloadTooLargeError) as caught:
            await dispatcher.publish("blob.stored", payload, subject=subject, actor=ACTOR)
        assert caught.value.limit == DEFAULT_MAX_PAYLOAD_BYTES
        assert caught.value.size > DEFAULT_MAX_PAYLOAD_BYTES
        assert caught.value.event_type == "blob.stored"
    assert await count_events(dispatch_pool) == 0
    await dispatcher.publish("blob.stored", at_limit, subject=subject, actor=ACTOR)
    assert await count_events(dispatch_pool) == 1


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"body": "nul \x00 inside"}, id="nul-in-text"),
        pytest.param({"body": "lone \ud800 surrogate"}, id="lone-surrogate"),
    ],
)
async def test_text_postgresql_cannot_store_is_refused_before_sql(
    dispatch_pool: asyncpg.Pool, registry: Registry, tmp_path: Path, payload: dict[str, Any]
) -> None:
    blobs = Registry.load(_blob_contracts(tmp_path / "contracts", registry.root))
    dispatcher = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_t", registry=blobs)
    async with dispatch_pool.acquire() as conn, conn.transaction():
        with pytest.raises(InvalidPayloadError) as caught:
            await dispatcher.publish(
                "blob.stored", payload, subject=_id("blb"), actor=ACTOR, conn=conn
            )
        assert caught.value.path == "$.payload"
        # No statement failed: the caller's transaction goes on.
        await dispatcher.publish(
            "blob.stored",
            {"body": "a \\u0000 written out"},
            subject=_id("blb"),
            actor=ACTOR,
            conn=conn,
        )
    stored = await dispatch_pool.fetchval("SELECT payload FROM dispatcher_event")
    assert json.loads(stored) == {"body": "a \\u0000 written out"}


async def test_oversize_payload_is_refused_at_a_custom_limit(
    dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    payload = locked_payload(registry)
    size = len(json.dumps(payload, separators=(",", ":")).encode())
    dispatcher = Dispatcher(
        dispatch_pool,
        producer="tests",
        tenant_id="tnt_tests",
        registry=registry,
        max_payload_bytes=size - 1,
    )
    with pytest.raises(PayloadTooLargeError, match=f"{size} bytes") as caught:
        await dispatcher.publish("credit.locked", payload, subject=_id("per"), actor=ACTOR)
    assert (caught.value.size, caught.value.limit) == (size, size - 1)
    assert await count_events(dispatch_pool) == 0
    exact = Dispatcher(
        dispatch_pool,
        producer="tests",
        tenant_id="tnt_tests",
        registry=registry,
        max_payload_bytes=size,
    )
    await exact.publish("credit.locked", payload, subject=_id("per"), actor=ACTOR)
    assert await count_events(dispatch_pool) == 1


@pytest.mark.parametrize(
    "schema", ['events"; DROP TABLE x; --', "it's", 'a"b', "", "1st", "a" * 64, "with space"]
)
async def test_unsafe_schema_name_is_refused_at_construction(
    dispatch_pool: asyncpg.Pool, registry: Registry, schema: str
) -> None:
    with pytest.raises(InvalidIdentifierError):
        Dispatcher(
            dispatch_pool, producer="tests", tenant_id="tnt_tests", registry=registry, schema=schema
        )


# --------------------------------------------------------------------------- publish_many


async def _count_statements(pool: asyncpg.Pool) -> None:
    """Count INSERT statements on dispatcher_event in a side table."""
    await pool.execute(
        """
        CREATE TABLE insert_statements (n integer NOT NULL);
        INSERT INTO insert_statements VALUES (0);
        CREATE FUNCTION count_insert_statement() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE insert_statements SET n = n + 1; RETURN NULL; END $$;
        CREATE TRIGGER count_insert_statement AFTER INSERT ON dispatcher_event
            FOR EACH STATEMENT EXECUTE FUNCTION count_insert_statement();
        """
    )


def _specs(registry: Registry, n: int) -> list[EventSpec]:
    specs: list[EventSpec] = []
    for _ in range(n):
        subject = _id("per")
        specs.append(
            {
                "event_type": "credit.locked",
                "payload": locked_payload(registry, subject),
                "subject": subject,
                "actor": ACTOR,
            }
        )
    return specs


async def test_publish_many_inserts_all_in_one_statement(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    await _count_statements(dispatch_pool)
    specs = _specs(registry, 99)
    lead = registry.example_payload("lead.created")
    specs.append(
        {
            "event_type": "lead.created",
            "payload": lead,
            "subject": _id("led"),
            "actor": "user:per_" + _UUID7,
            "correlation_id": "req-42",
        }
    )
    async with dispatch_pool.acquire() as conn, conn.transaction():
        envelopes = await dispatcher.publish_many(specs, conn=conn)
        xid = await conn.fetchval("SELECT pg_current_xact_id()::text")
    assert await dispatch_pool.fetchval("SELECT n FROM insert_statements") == 1
    assert [e.subject for e in envelopes] == [s["subject"] for s in specs]
    assert len({e.event_id for e in envelopes}) == 100
    rows = await dispatch_pool.fetch(
        "SELECT event_id, event_type, subject, payload, xid::text AS xid, correlation_id"
        " FROM dispatcher_event ORDER BY position"
    )
    # Inserted in the order given, all by the caller's transaction.
    assert [r["event_id"] for r in rows] == [e.event_id for e in envelopes]
    assert {r["xid"] for r in rows} == {xid}
    assert [json.loads(r["payload"]) for r in rows] == [s["payload"] for s in specs]
    assert rows[-1]["event_type"] == "lead.created"
    assert rows[-1]["correlation_id"] == "req-42"

    # Own transaction: one more statement, 100 more rows.
    await dispatcher.publish_many(_specs(registry, 100))
    assert await dispatch_pool.fetchval("SELECT n FROM insert_statements") == 2
    assert await count_events(dispatch_pool) == 200


async def test_publish_many_writes_nothing_when_one_event_is_invalid(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    specs = _specs(registry, 100)
    del specs[57]["payload"]["locked_at"]
    async with dispatch_pool.acquire() as conn:
        async with conn.transaction():
            with pytest.raises(InvalidPayloadError) as caught:
                await dispatcher.publish_many(specs, conn=conn)
        with pytest.raises(InvalidPayloadError):
            await dispatcher.publish_many(specs)
    assert caught.value.path == "$.payload.locked_at"
    specs = _specs(registry, 3)
    specs[2]["event_type"] = "credit.teleported"
    with pytest.raises(UnknownEventTypeError):
        await dispatcher.publish_many(specs)
    specs = _specs(registry, 3)
    del specs[1]["actor"]  # type: ignore[misc]
    with pytest.raises(UsageError, match="actor"):
        await dispatcher.publish_many(specs)
    with pytest.raises(UsageError):
        await dispatcher.publish_many(specs[0])  # type: ignore[arg-type]
    assert await dispatcher.publish_many([]) == []
    assert await count_events(dispatch_pool) == 0


# --------------------------------------------------------------------------- stored columns


async def test_xid_and_position_are_set_by_the_database(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    async with dispatch_pool.acquire() as conn:
        async with conn.transaction():
            envelope = await dispatcher.publish(
                "credit.locked",
                locked_payload(registry),
                subject=_id("per"),
                actor=ACTOR,
                conn=conn,
            )
            own_xid = await conn.fetchval("SELECT pg_current_xact_id()::text")
        async with conn.transaction():
            # A caller writing the table directly cannot choose xid or position.
            await conn.execute(
                """INSERT INTO dispatcher_event (position, xid, event_id, event_type,
                       schema_version, tenant_id, producer, subject, actor, occurred_at, payload)
                   VALUES (424242, '7', 'evt_forged', 'credit.locked', 1, 'tnt_tests', 'tests',
                           $1, 'system:forger', now(), '{}')""",
                _id("per"),
            )
            forger_xid = await conn.fetchval("SELECT pg_current_xact_id()::text")
    rows = {
        r["event_id"]: r
        for r in await dispatch_pool.fetch(
            "SELECT event_id, xid::text AS xid, position FROM dispatcher_event"
        )
    }
    assert rows[envelope.event_id]["xid"] == own_xid
    assert rows["evt_forged"]["xid"] == forger_xid != "7"
    assert rows["evt_forged"]["position"] != 424242
    assert rows["evt_forged"]["position"] > rows[envelope.event_id]["position"]


async def test_envelope_is_frozen_and_round_trips(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    subject = _id("per")
    envelope = await dispatcher.publish(
        "credit.locked",
        locked_payload(registry, subject),
        subject=subject,
        actor=ACTOR,
        correlation_id=_id("evt"),
    )
    assert isinstance(envelope, Envelope)
    with pytest.raises(pydantic.ValidationError):
        envelope.subject = _id("per")  # type: ignore[misc]
    data = json.loads(json.dumps(envelope.to_json_dict()))
    assert "causation_id" not in data  # unset optionals are omitted, not null
    schema = json.loads((registry.root / ENVELOPE_SCHEMA_PATH).read_text())
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(data)
    registry.validate_event(data)
    again = Envelope.model_validate(data)
    assert again == envelope
    assert again.to_json_dict() == envelope.to_json_dict()


# --------------------------------------------------------------------------- configuration


async def test_producer_and_tenant_fall_back_to_environment_at_construction(
    dispatch_pool: asyncpg.Pool, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCHER_PRODUCER", "revenue")
    monkeypatch.setenv("DISPATCHER_TENANT_ID", "tnt_sguild")
    dispatcher = Dispatcher(dispatch_pool, registry=registry)
    # Read once, when built: later changes do not leak into this dispatcher.
    monkeypatch.setenv("DISPATCHER_PRODUCER", "coaching")
    monkeypatch.setenv("DISPATCHER_TENANT_ID", "tnt_other")
    envelope = await dispatcher.publish(
        "credit.locked", locked_payload(registry), subject=_id("per"), actor=ACTOR
    )
    assert (envelope.producer, envelope.tenant_id) == ("revenue", "tnt_sguild")
    row = await dispatch_pool.fetchrow("SELECT producer, tenant_id FROM dispatcher_event")
    assert tuple(row) == ("revenue", "tnt_sguild")
    # Explicit arguments win over the environment.
    explicit = Dispatcher(dispatch_pool, producer="delivery", tenant_id="tnt_x", registry=registry)
    assert (explicit.producer, explicit.tenant_id) == ("delivery", "tnt_x")


def test_missing_producer_or_tenant_is_a_clear_configuration_error(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPATCHER_PRODUCER", raising=False)
    monkeypatch.delenv("DISPATCHER_TENANT_ID", raising=False)
    with pytest.raises(ConfigurationError, match="DISPATCHER_PRODUCER"):
        Dispatcher(None, tenant_id="tnt_tests", registry=registry)
    with pytest.raises(ConfigurationError, match="DISPATCHER_TENANT_ID"):
        Dispatcher(None, producer="tests", registry=registry)
    monkeypatch.setenv("DISPATCHER_PRODUCER", "")
    with pytest.raises(ConfigurationError, match="producer"):
        Dispatcher(None, tenant_id="tnt_tests", registry=registry)


async def test_unmigrated_schema_names_the_command_to_run(
    dispatch_postgres: TestPostgres, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    name = await dispatch_postgres.create_database(migrated=False)
    try:
        conn = await asyncpg.connect(dispatch_postgres.dsn(name))
        try:
            empty = Dispatcher(None, producer="tests", tenant_id="tnt_tests", registry=registry)
            async with conn.transaction():
                with pytest.raises(SchemaNotMigratedError, match="dispatch-aio migrate") as caught:
                    await empty.publish(
                        "credit.locked",
                        locked_payload(registry),
                        subject=_id("per"),
                        actor=ACTOR,
                        conn=conn,
                    )
            assert isinstance(caught.value.__cause__, asyncpg.PostgresError)
        finally:
            await conn.close()
    finally:
        await dispatch_postgres.drop_database(name)
    # A migrated database, but another schema than the one migrated.
    elsewhere = Dispatcher(
        dispatch_pool, producer="tests", tenant_id="tnt_tests", registry=registry, schema="billing"
    )
    with pytest.raises(SchemaNotMigratedError, match=r"dispatch-aio migrate.*--schema billing"):
        await elsewhere.publish(
            "credit.locked", locked_payload(registry), subject=_id("per"), actor=ACTOR
        )


# --------------------------------------------------------------------------- ordering


async def _wait_until_blocked(observer: asyncpg.Connection, waiter: int, holder: int) -> None:
    """Return once backend ``waiter`` waits for a lock ``holder`` holds (bounded poll)."""
    async with asyncio.timeout(WAIT):
        while True:
            if await observer.fetchval("SELECT $2 = ANY(pg_blocking_pids($1))", waiter, holder):
                return
            await asyncio.sleep(0.01)


async def test_position_follows_commit_order_when_xids_do_not(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    subject = _id("per")
    async with dispatch_pool.acquire() as c1, dispatch_pool.acquire() as c2:
        t1 = c1.transaction()
        await t1.start()
        try:
            # T1 writes first, so it holds the older transaction id...
            await c1.execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
            xid1 = int(await c1.fetchval("SELECT pg_current_xact_id()::text"))
            # ...but T2 publishes for the subject and commits first,
            async with c2.transaction():
                e2 = await dispatcher.publish(
                    "credit.locked",
                    locked_payload(registry, subject),
                    subject=subject,
                    actor=ACTOR,
                    conn=c2,
                )
            # then T1 publishes for the same subject and commits.
            e1 = await dispatcher.publish(
                "credit.locked",
                locked_payload(registry, subject),
                subject=subject,
                actor=ACTOR,
                conn=c1,
            )
        except BaseException:
            await t1.rollback()
            raise
        await t1.commit()
    rows = {
        r["event_id"]: (int(r["xid"]), r["position"])
        for r in await dispatch_pool.fetch(
            "SELECT event_id, xid::text AS xid, position FROM dispatcher_event"
        )
    }
    assert rows[e1.event_id][0] == xid1
    assert rows[e1.event_id][0] < rows[e2.event_id][0]  # T1 has the smaller xid
    assert rows[e1.event_id][1] > rows[e2.event_id][1]  # and the larger position


async def test_second_publisher_of_a_subject_waits_for_the_first_to_commit(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    """Without the per-subject lock T2 would take a position, commit first and sort later."""
    subject = _id("per")
    async with (
        dispatch_pool.acquire() as c1,
        dispatch_pool.acquire() as c2,
        dispatch_pool.acquire() as observer,
    ):
        t1 = c1.transaction()
        await t1.start()
        try:
            e1 = await dispatcher.publish(
                "credit.locked",
                locked_payload(registry, subject),
                subject=subject,
                actor=ACTOR,
                conn=c1,
            )

            async def second() -> Envelope:
                async with c2.transaction():
                    return await dispatcher.publish(
                        "credit.locked",
                        locked_payload(registry, subject),
                        subject=subject,
                        actor=ACTOR,
                        conn=c2,
                    )

            task = asyncio.create_task(second())
            await _wait_until_blocked(observer, c2.get_server_pid(), c1.get_server_pid())
            assert not task.done()
            # Another subject is not held up by T1.
            other = _id("per")
            async with asyncio.timeout(WAIT):
                await dispatcher.publish(
                    "credit.locked", locked_payload(registry, other), subject=other, actor=ACTOR
                )
        except BaseException:
            await t1.rollback()
            raise
        await t1.commit()
        async with asyncio.timeout(WAIT):
            e2 = await task
    positions = {
        r["event_id"]: r["position"]
        for r in await dispatch_pool.fetch("SELECT event_id, position FROM dispatcher_event")
    }
    assert positions[e1.event_id] < positions[e2.event_id]


# --------------------------------------------------------------------------- NOTIFY


class _Listener:
    """Collects notifications of one channel on a dedicated connection."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._arrived = asyncio.Condition()

    def __call__(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.received.append(payload)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    async def wait_for(self, payload: str) -> None:
        """Return once ``payload`` has been received (bounded)."""
        async with asyncio.timeout(WAIT), self._arrived:
            await self._arrived.wait_for(lambda: payload in self.received)


@pytest.fixture
async def listener(dispatch_dsn: str) -> AsyncIterator[_Listener]:
    conn = await asyncpg.connect(dispatch_dsn)
    collected = _Listener()
    await conn.add_listener(CHANNEL, collected)
    try:
        yield collected
    finally:
        await conn.close()


async def _marker(pool: asyncpg.Pool, listener: _Listener) -> None:
    """A sync point: once the marker arrives, every earlier commit's notifications have."""
    await pool.execute("SELECT pg_notify($1, 'marker')", CHANNEL)
    await listener.wait_for("marker")


async def test_a_transaction_of_100_events_notifies_once(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry, listener: _Listener
) -> None:
    async with dispatch_pool.acquire() as conn, conn.transaction():
        for _ in range(100):
            subject = _id("per")
            await dispatcher.publish(
                "credit.locked",
                locked_payload(registry, subject),
                subject=subject,
                actor=ACTOR,
                conn=conn,
            )
    await listener.wait_for("credit.locked")
    await _marker(dispatch_pool, listener)
    assert listener.received == ["credit.locked", "marker"]

    # publish_many with two types: one notification per type, none for a rolled-back one.
    listener.received.clear()
    specs = _specs(registry, 50)
    for _ in range(50):
        specs.append(
            {
                "event_type": "lead.created",
                "payload": registry.example_payload("lead.created"),
                "subject": _id("led"),
                "actor": ACTOR,
            }
        )
    async with dispatch_pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await dispatcher.publish_many(_specs(registry, 5), conn=conn)
        await transaction.rollback()
    await dispatcher.publish_many(specs)
    await _marker(dispatch_pool, listener)
    assert sorted(listener.received) == ["credit.locked", "lead.created", "marker"]


async def test_poll_only_mode_sends_no_notification(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, registry: Registry, listener: _Listener
) -> None:
    await migrate(dispatch_pool, notify=False)
    await dispatcher.publish_many(_specs(registry, 10))
    await dispatcher.publish(
        "credit.locked", locked_payload(registry), subject=_id("per"), actor=ACTOR
    )
    await _marker(dispatch_pool, listener)
    assert listener.received == ["marker"]
    assert await count_events(dispatch_pool) == 11
