"""Hostile input to every public entry point meets only the package's own errors.

A property test: wrong types, NaN/inf, NUL, lone surrogates, huge nesting, edge and
odd timestamps, odd schema names. Each call either succeeds or raises a DispatchError
subclass; a publish that fails writes nothing. ``HOSTILE_EXAMPLES`` (environment) raises
the example count: ``nox -s fuzz`` runs it with many more.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_aio import Consumer, DeadLetters, Dispatcher, DispatchError, Registry
from dispatch_aio._resources import bundled_contracts_dir

from .helpers import uid

pytestmark = pytest.mark.anyio

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "120"))
FREE_FORM = "custom.free_form"


class _BadOffset(tzinfo):
    """A tzinfo whose offset is out of range (datetime refuses it when asked)."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=30)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)


class _Raising(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no offset today")


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]


class _Deep(dict[str, Any]):
    """A deeply nested payload whose repr stays short (hypothesis prints examples)."""

    def __repr__(self) -> str:
        return f"<payload nested {self['depth']} deep>"


def _nested(depth: int, *, lists: bool = False) -> _Deep:
    value: Any = [] if lists else {}
    for _ in range(depth - 1):
        value = [value] if lists else {"n": value}
    return _Deep(depth=depth, n=value)


odd_strings = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\ud800", "x" * 5000, "public\n", 'a"b', "événement", "1abc"]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    odd_strings,
    st.binary(max_size=4),
)
odd_objects = st.sampled_from(
    [[], {}, set(), frozenset({1}), (1, 2), object(), _Unhashable(), [1, "a"], {"a": 1}, 1j]
)
hostile = st.one_of(scalars, odd_objects)

_EDGE_DATETIMES = [
    lambda: datetime.max,
    lambda: datetime.min,
    lambda: datetime.max.replace(tzinfo=UTC),
    lambda: datetime.min.replace(tzinfo=UTC),
    lambda: datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
    lambda: datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))),
    lambda: datetime(999, 5, 1, tzinfo=UTC),
    lambda: datetime(42, 1, 1, 12, tzinfo=timezone(timedelta(hours=-3))),
    lambda: datetime(2026, 1, 1, tzinfo=_BadOffset()),
    lambda: datetime(2026, 1, 1, tzinfo=_Raising()),
    lambda: datetime(2026, 1, 1),
]
# Built when drawn: a datetime with a broken tzinfo cannot even be compared or hashed.
edge_datetimes = st.integers(0, len(_EDGE_DATETIMES) - 1).map(lambda i: _EDGE_DATETIMES[i]())
aware = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.timezones() | st.just(UTC),
)
timestamps = st.one_of(st.none(), edge_datetimes, aware, hostile)


@pytest.fixture(scope="module")
def contracts_with_a_free_form_type(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled contracts plus a user's event type whose payload is any object."""
    root = tmp_path_factory.mktemp("contracts") / "contracts"
    shutil.copytree(bundled_contracts_dir(), root)
    schema = root / "custom" / "schema" / "payloads" / f"{FREE_FORM}-v1.json"
    schema.parent.mkdir(parents=True)
    schema.write_text(
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": f"{FREE_FORM}-v1.json",
                "type": "object",
                "examples": [{}],
            }
        )
    )
    registry_file = root / "event-types-registry.json"
    registry = json.loads(registry_file.read_text())
    registry["event_types"][FREE_FORM] = {
        "contract": "custom",
        "producer": "tests",
        "subscribers": ["tests"],
        "current_version": 1,
        "versions": [
            {
                "version": 1,
                "status": "active",
                "payload_schema": f"custom/schema/payloads/{FREE_FORM}-v1.json",
            }
        ],
    }
    registry_file.write_text(json.dumps(registry))
    return root


@pytest.fixture(scope="module")
def registry(contracts_with_a_free_form_type: Path) -> Registry:
    return Registry.load(contracts_with_a_free_form_type)


def _payloads(registry: Registry) -> st.SearchStrategy[Any]:
    def example(event_type: str) -> dict[str, Any]:
        return registry.example_payload(event_type)

    valid = st.sampled_from(registry.event_types()).map(example)

    def spoil(pair: tuple[dict[str, Any], Any, str | None]) -> dict[str, Any]:
        payload, value, key = pair
        if payload and key is None:
            key = sorted(payload)[0]
        payload[key if key is not None else "extra"] = value
        return payload

    spoiled = st.tuples(valid, hostile, st.one_of(st.none(), odd_strings)).map(spoil)
    deep = st.sampled_from([(1000, False), (5000, False), (3000, True), (30, False)]).map(
        lambda spec: _nested(spec[0], lists=spec[1])
    )
    return st.one_of(valid, spoiled, deep, hostile, st.dictionaries(odd_strings, hostile))


def _event_types(registry: Registry) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from([*registry.event_types(), FREE_FORM]), hostile, st.just("a.b\n")
    )


def _ids(prefix: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.builds(lambda: uid(prefix)), hostile)


def _publish_kwargs(registry: Registry) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "event_type": _event_types(registry),
            "payload": _payloads(registry),
            "subject": _ids("per"),
            "actor": st.one_of(st.just("system:tests"), hostile),
        },
        optional={
            "schema_version": st.one_of(st.integers(-2, 3), hostile),
            "correlation_id": st.one_of(st.builds(lambda: uid("cor")), hostile),
            "causation_id": _ids("evt"),
            "occurred_at": timestamps,
        },
    )


def run_hypothesis(test: Any) -> None:
    settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )(test)()


async def _events(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM dispatcher_event"))


async def test_publish_raises_only_dispatch_errors_and_writes_nothing_on_failure(
    dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    dispatcher = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_a", registry=registry)

    async def attempt(kwargs: dict[str, Any]) -> None:
        before = await _events(dispatch_pool)
        event_type, payload = kwargs.pop("event_type"), kwargs.pop("payload")
        try:
            envelope = await dispatcher.publish(event_type, payload, **kwargs)
        except DispatchError:
            assert await _events(dispatch_pool) == before
            return
        assert await _events(dispatch_pool) == before + 1
        stored = await dispatch_pool.fetchval(
            "SELECT occurred_at FROM dispatcher_event WHERE event_id = $1", envelope.event_id
        )
        assert stored == envelope.occurred_at
        assert stored.tzinfo is not None

    @given(kwargs=_publish_kwargs(registry))
    def check(kwargs: dict[str, Any]) -> None:
        anyio.from_thread.run(attempt, kwargs)

    await anyio.to_thread.run_sync(run_hypothesis, check)


async def test_publish_many_raises_only_dispatch_errors_and_writes_nothing_on_failure(
    dispatch_pool: asyncpg.Pool, registry: Registry
) -> None:
    dispatcher = Dispatcher(dispatch_pool, producer="tests", tenant_id="tnt_a", registry=registry)

    async def attempt(events: Any) -> None:
        before = await _events(dispatch_pool)
        try:
            await dispatcher.publish_many(events)
        except DispatchError:
            assert await _events(dispatch_pool) == before

    @given(
        events=st.one_of(
            st.lists(st.one_of(_publish_kwargs(registry), hostile), max_size=3),
            hostile,
        )
    )
    def check(events: Any) -> None:
        anyio.from_thread.run(attempt, events)

    await anyio.to_thread.run_sync(run_hypothesis, check)


_schemas = st.one_of(st.just("public"), odd_strings, hostile, st.just("x" * 64))
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 2**70), hostile
)


def test_dispatcher_construction_raises_only_dispatch_errors(registry: Registry) -> None:
    @given(
        producer=st.one_of(st.just("tests"), hostile),
        tenant_id=st.one_of(st.just("tnt_a"), hostile),
        schema=_schemas,
        max_payload_bytes=_numbers,
        registry_arg=st.one_of(st.just(registry), st.none(), hostile),
    )
    def check(
        producer: Any, tenant_id: Any, schema: Any, max_payload_bytes: Any, registry_arg: Any
    ) -> None:
        try:
            dispatcher = Dispatcher(
                None,
                producer=producer,
                tenant_id=tenant_id,
                schema=schema,
                max_payload_bytes=max_payload_bytes,
                registry=registry_arg,
            )
        except DispatchError:
            return
        assert dispatcher.max_payload_bytes > 0

    run_hypothesis(check)


def test_consumer_construction_and_on_raise_only_dispatch_errors(registry: Registry) -> None:
    option_names = st.sampled_from(
        [
            "db_schema",
            "concurrency",
            "batch_size",
            "poll_interval",
            "retry_delays",
            "handler_timeout",
            "start_from",
            "no_such_option",
        ]
    )

    @given(
        name=st.one_of(st.just("coaching"), odd_strings, hostile),
        options=st.dictionaries(option_names, st.one_of(_numbers, _schemas), max_size=3),
        event_type=_event_types(registry),
        timeout=st.one_of(st.none(), _numbers),
        retry_delays=st.one_of(
            st.none(), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3)
        ),
    )
    def check(
        name: Any, options: dict[str, Any], event_type: Any, timeout: Any, retry_delays: Any
    ) -> None:
        try:
            consumer = Consumer(None, name, registry=registry, **options)  # type: ignore[arg-type]
            consumer.on(event_type, timeout=timeout, retry_delays=retry_delays)
        except DispatchError:
            return

    run_hypothesis(check)


def test_dead_letters_construction_raises_only_dispatch_errors() -> None:
    @given(schema=_schemas)
    def check(schema: Any) -> None:
        try:
            DeadLetters(None, schema)  # type: ignore[arg-type]
        except DispatchError:
            return

    run_hypothesis(check)


@pytest.mark.parametrize(
    "when",
    [
        datetime(42, 3, 1, 12, tzinfo=timezone(timedelta(hours=-3))),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC),
    ],
)
async def test_edge_timestamps_in_range_are_stored_and_read_back_exactly(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, when: datetime
) -> None:
    payload = dispatcher.registry.example_payload("credit.locked")
    envelope = await dispatcher.publish(
        "credit.locked", payload, subject=uid("per"), actor="system:tests", occurred_at=when
    )
    stored = await dispatch_pool.fetchval(
        "SELECT occurred_at FROM dispatcher_event WHERE event_id = $1", envelope.event_id
    )
    assert stored == when
    assert stored.tzinfo is not None


@pytest.mark.parametrize("when", [datetime.max.replace(tzinfo=UTC), datetime.max])
async def test_datetime_max_is_refused_and_nothing_is_written(
    dispatcher: Dispatcher, dispatch_pool: asyncpg.Pool, when: datetime
) -> None:
    payload = dispatcher.registry.example_payload("credit.locked")
    with pytest.raises(DispatchError):
        await dispatcher.publish(
            "credit.locked", payload, subject=uid("per"), actor="system:tests", occurred_at=when
        )
    assert await _events(dispatch_pool) == 0
