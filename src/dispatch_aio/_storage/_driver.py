"""The driver boundary: what a failure means, and ending work on a connection safely.

One function, :func:`classify`, says what an exception means:

- ``INFRASTRUCTURE``: the connection or the server failed (connection lost, server
  starting, in recovery or shutting down, too many connections, deadlock, serialization
  failure, a commit that did not answer in time). Nothing is wrong with the event: the
  caller reconnects with backoff and runs the work again, counting no attempt.
- ``EVENT``: the event's own failure (a handler raised). Counts an attempt.
- ``BUG``: anything else raised by the library's own code. The consumer fails loudly.

The helpers :func:`commit`, :func:`rollback` and :func:`release` are shielded from
cancellation and bounded in time. ``rollback`` and ``release`` never raise, whatever
state the connection is in (dead, terminated, already given back to the pool: calling
anything on a pool connection after its release raises ``InterfaceError``). ``commit``
raises only what :func:`classify` calls infrastructure, or what the server said about the
transaction's own statements.
"""

from __future__ import annotations

import enum
import random
from typing import Any

import anyio
import asyncpg
import asyncpg.exceptions

__all__ = [
    "INFRASTRUCTURE_ERRORS",
    "SERVER_FAILURES",
    "Backoff",
    "CommitTimeoutError",
    "FailureKind",
    "classify",
    "commit",
    "is_infrastructure",
    "is_usable",
    "keeps_connection",
    "release",
    "rollback",
    "terminate",
]


class CommitTimeoutError(ConnectionError):
    """A commit got no answer within ``commit_timeout``; its outcome is unknown.

    The connection is terminated: the work runs again, and the dedup markers written with
    it make a second run of work that did commit a no-op.
    """


#: Exceptions that say the connection or the server failed, never the statement.
SERVER_FAILURES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08, ConnectionDoesNotExistError included
    asyncpg.AdminShutdownError,  # 57P01: pg_terminate_backend, fast shutdown, failover
    asyncpg.CrashShutdownError,  # 57P02: another backend crashed, the postmaster restarts
    asyncpg.CannotConnectNowError,  # 57P03: starting up or in recovery
    asyncpg.exceptions.IdleSessionTimeoutError,  # 57P05
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,  # 25P03
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.DeadlockDetectedError,  # 40P01
    asyncpg.SerializationError,  # 40001
    # "cannot switch to state N; another operation is in progress": the protocol lost
    # its footing because the socket died under a running query.
    asyncpg.InternalClientError,
)

#: What the library's own database calls raise when the connection or server failed:
#: the server's answers above, socket errors (OSError, TimeoutError included: a connect,
#: an acquire or a query that got no answer) and the driver's "connection is closed".
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    *SERVER_FAILURES,
    OSError,
    asyncpg.InterfaceError,
)

#: Of those, the ones after which the connection itself is still fine.
_TRANSACTION_ONLY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


class FailureKind(enum.Enum):
    """What a failure means for the work that raised it."""

    INFRASTRUCTURE = "infrastructure"
    EVENT = "event"
    BUG = "bug"


def is_usable(conn: Any) -> bool:
    """True when ``conn`` is open and still ours; never raises (released proxies raise)."""
    if conn is None:
        return False
    try:
        return not conn.is_closed()
    except Exception:
        return False


def is_infrastructure(exc: BaseException, conn: Any = None) -> bool:
    """True when ``exc`` means the database or the connection failed, not the work.

    ``conn`` is given for exceptions out of handler code, which does its own I/O: there a
    socket error or ``InterfaceError`` is infrastructure only when the event's connection
    died (otherwise it is the handler's own failure: another service, misuse of the
    connection). Without ``conn`` (the library's own calls) they always are.
    """
    if isinstance(exc, SERVER_FAILURES):
        return True
    if conn is not None:
        return not is_usable(conn)
    return isinstance(exc, INFRASTRUCTURE_ERRORS) and not isinstance(
        exc, asyncpg.exceptions._base.DataError
    )


def classify(exc: BaseException, *, handler: bool, conn: Any = None) -> FailureKind:
    """What ``exc`` means: infrastructure, the event's own failure, or a bug.

    ``handler`` says whether it came out of handler code (then anything that is not
    infrastructure is the event's failure) or out of the library's own code (then it is
    a bug). A ``TimeoutError`` out of a handler is its own timeout: the event's failure.
    """
    if isinstance(exc, CommitTimeoutError):
        return FailureKind.INFRASTRUCTURE
    if is_infrastructure(exc, conn if handler else None):
        return FailureKind.INFRASTRUCTURE
    return FailureKind.EVENT if handler else FailureKind.BUG


def keeps_connection(exc: BaseException, conn: Any) -> bool:
    """After an infrastructure failure: can ``conn`` be used again once rolled back?"""
    return isinstance(exc, _TRANSACTION_ONLY) and is_usable(conn)


def terminate(conn: Any) -> None:
    """Close ``conn`` at once; never raises (dead, terminated or released alike)."""
    if conn is None:
        return
    try:
        conn.terminate()
    except Exception:  # released to the pool already, or the socket is gone
        return


async def commit(transaction: Any, conn: Any, limit: float) -> None:
    """Commit, shielded from cancellation and bounded by ``limit`` seconds.

    On timeout the connection is terminated and :class:`CommitTimeoutError` raised: the
    commit may or may not have happened, and only a new connection can tell.
    """
    with anyio.CancelScope(shield=True):
        try:
            with anyio.fail_after(limit):
                await transaction.commit()
        except TimeoutError:
            terminate(conn)
            raise CommitTimeoutError(f"commit did not answer within {limit:g}s") from None


async def rollback(transaction: Any, conn: Any, limit: float) -> bool:
    """Roll back, shielded and bounded; True when ``conn`` can be used again. Never raises.

    A connection that is dead, timed out or in an unknown state is terminated.
    """
    if transaction is None:
        return is_usable(conn)
    if not is_usable(conn):
        terminate(conn)
        return False
    with anyio.CancelScope(shield=True):
        try:
            with anyio.fail_after(limit):
                await transaction.rollback()
        except Exception:
            terminate(conn)
            return False
    return is_usable(conn)


async def release(pool: Any, conn: Any, limit: float) -> None:
    """Give ``conn`` back to ``pool``, shielded and bounded. Never raises.

    A connection the pool cannot take back (dead, busy, already released) is terminated;
    the pool makes a new one when it is next needed.
    """
    if conn is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            with anyio.fail_after(limit):
                await pool.release(conn)
        except Exception:
            terminate(conn)


class Backoff:
    """Capped exponential backoff with jitter: ``first * 2**n`` up to ``cap``, +0-``jitter``.

    ``reset()`` after a success. Pure: the random source is injectable for tests.
    """

    __slots__ = ("_cap", "_failures", "_first", "_jitter", "_rng")

    def __init__(
        self,
        first: float,
        cap: float,
        *,
        jitter: float = 0.3,
        rng: random.Random | None = None,
    ) -> None:
        self._first = first
        self._cap = max(cap, first)
        self._jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failures since the last reset."""
        return self._failures

    def next(self) -> float:
        """The wait before the next try (and count one more failure)."""
        base = min(self._cap, self._first * 2 ** min(self._failures, 30))
        self._failures += 1
        return float(base * (1 + self._rng.uniform(0, self._jitter)))

    def reset(self) -> None:
        """Back to the first delay."""
        self._failures = 0
