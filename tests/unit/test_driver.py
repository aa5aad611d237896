"""The driver boundary without a database: failure classes, backoff, dead connections."""

from __future__ import annotations

import random

import asyncpg
import pytest

from dispatch_aio._consume._codec import (
    MAX_MESSAGE,
    UndecodableEventError,
    occurred_at,
    storable,
)
from dispatch_aio._storage import (
    Backoff,
    CommitTimeoutError,
    FailureKind,
    classify,
    is_usable,
    release,
    rollback,
    terminate,
)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.PostgresConnectionError("lost"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is in recovery mode"),
        asyncpg.CrashShutdownError("terminating connection because of crash of another"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.SerializationError("could not serialize access"),
        ConnectionResetError("reset by peer"),
        TimeoutError(),
        CommitTimeoutError("commit did not answer"),
    ],
)
def test_infrastructure_failures_of_the_library_own_calls(exc: BaseException) -> None:
    assert classify(exc, handler=False) is FailureKind.INFRASTRUCTURE


def test_other_library_exceptions_are_bugs() -> None:
    assert classify(KeyError("x"), handler=False) is FailureKind.BUG
    assert classify(asyncpg.UndefinedColumnError("no column"), handler=False) is FailureKind.BUG


class Alive:
    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        raise AssertionError("must not be terminated")


class Released:
    """A pool connection given back already: every call raises InterfaceError."""

    def is_closed(self) -> bool:
        raise asyncpg.InterfaceError("connection has been released back to the pool")

    def terminate(self) -> None:
        raise asyncpg.InterfaceError("connection has been released back to the pool")


def test_handler_failures_on_a_live_connection_are_the_event_own() -> None:
    conn = Alive()
    assert classify(ValueError("bad"), handler=True, conn=conn) is FailureKind.EVENT
    # Its own timeout, or another service's socket: still the event's failure.
    assert classify(TimeoutError(), handler=True, conn=conn) is FailureKind.EVENT
    assert classify(ConnectionRefusedError(), handler=True, conn=conn) is FailureKind.EVENT
    # But the server's word on the transaction is infrastructure, even in a handler.
    deadlock = asyncpg.DeadlockDetectedError("deadlock")
    assert classify(deadlock, handler=True, conn=conn) is FailureKind.INFRASTRUCTURE


def test_handler_failures_on_a_lost_connection_are_infrastructure() -> None:
    assert classify(ValueError("x"), handler=True, conn=Released()) is FailureKind.INFRASTRUCTURE


def test_released_connections_never_raise_from_the_helpers() -> None:
    conn = Released()
    assert not is_usable(conn)
    terminate(conn)


class FailingPool:
    async def release(self, conn: object) -> None:
        raise asyncpg.InterfaceError("released already")


@pytest.mark.anyio
async def test_release_and_rollback_of_a_released_connection_do_not_raise() -> None:
    conn = Released()
    await release(FailingPool(), conn, 1.0)
    assert await rollback(object(), conn, 1.0) is False


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(0.1, 2.0, jitter=0.3, rng=random.Random(1))
    waits = [backoff.next() for _ in range(8)]
    assert 0.1 <= waits[0] <= 0.13
    assert all(2.0 <= w <= 2.6 for w in waits[5:])
    backoff.reset()
    assert backoff.next() <= 0.13


def test_occurred_at_out_of_python_range_is_undecodable_not_a_crash() -> None:
    assert occurred_at(0).year == 1970
    for micros in (None, 253402300800 * 10**6, -62167219200 * 10**6 - 10**12):
        with pytest.raises(UndecodableEventError, match="occurred_at"):
            occurred_at(micros)


def test_dead_letter_text_is_always_storable() -> None:
    text = storable("a\x00b\udcff" + "x" * 10_000, MAX_MESSAGE)
    assert "\x00" not in text
    text.encode("utf-8")
    assert len(text) == MAX_MESSAGE
    assert storable("tail" * 10, 8, keep="tail") == "tailtail"
