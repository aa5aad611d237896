"""Group commit for the inbox: events that arrive together are inserted and committed together.

Each request's event waits in a queue; one flush at a time takes everything queued (up
to a cap) and inserts it in one statement, so one transaction, one WAL flush and one
notification serve them all. A request hears its answer only once its row's transaction
has committed. While a flush commits, the next requests queue up and go together in the
following one: under load the batches grow by themselves, and a lone request is written
at once, without waiting for company.

A row that makes the whole statement fail (an error of its own, not the database's
absence) must not fail the others: the batch is then written again one row per
transaction, and only that row's request sees its error. A database that cannot be
reached fails every request of the batch (each answers 503 and its sender retries).

A request cancelled while it waits (its client went away) does not take its row out
of the batch (only its own future is cancelled, and the flush skips answering it): the
row may still commit. That is safe: the sender, having no answer,
sends it again, and the redelivered event_id then answers 200 without a second row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from .._db import translate_errors
from .._errors import DatabaseError
from .._sql import queries

__all__ = ["InboxRow", "InboxWriter"]

#: (event_id, event_type, schema_version, tenant_id, producer, subject, actor,
#: occurred_at, correlation_id, causation_id, traceparent, the request's body: the
#: validated envelope as JSON text, whose payload PostgreSQL stores as sent; the digest
#: of the schema that payload was checked against, ADR 0007)
InboxRow = tuple[
    str, str, int, str, str, str, str, datetime, str | None, str | None, str | None, str, int
]

_MAX_ROWS = 256
#: Seconds a flush keeps its pool connection once the queue is empty: under a steady
#: stream the next requests come within it and are written without a pool release (whose
#: reset is a round trip and a statement for PostgreSQL) and a new acquire.
_LINGER = 0.05
#: Body characters per batch: a few large events are not held in one statement's arrays.
_MAX_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class _Waiting:
    row: InboxRow
    future: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class InboxWriter:
    """Inserts received events into ``dispatcher_event``, many per transaction.

    :meth:`insert` returns once the event's row is committed: True when it was written,
    False when its event_id was already present (a redelivery). Raises
    DatabaseUnavailableError or TimeoutError when the database cannot be reached (no
    connection within ``acquire_timeout``), DatabaseError when the row itself cannot be
    stored. Cancelling a caller does not withdraw its row (see the module's note).
    """

    def __init__(self, pool: asyncpg.Pool, *, schema: str, acquire_timeout: float) -> None:
        self.pool = pool
        self.schema = schema
        self.acquire_timeout = acquire_timeout
        self._insert_one = queries(schema).inbox_insert_event
        self._insert_many = queries(schema).inbox_insert_events
        self._queue: deque[_Waiting] = deque()
        self._flushing: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None

    async def insert(self, row: InboxRow) -> bool:
        """Queue ``row`` and wait until the transaction that holds it has committed."""
        waiting = _Waiting(row)
        self._queue.append(waiting)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        elif self._wakeup is not None:
            _resolve(self._wakeup)  # the flush was lingering: it writes this now
        # No shield: a cancelled caller cancels only its future; the row stays in its
        # batch, and the flush skips answering a future that is already done.
        return await waiting.future

    async def _flush(self) -> None:
        """Write batches until the queue is empty; resolve every request taken.

        One pool connection serves the whole run: under load, batches follow each other
        without a pool release (and its reset round trip) between them, and the run
        waits up to ``_LINGER`` for more requests before it gives the connection back.
        """
        batch: list[_Waiting] = []
        conn: asyncpg.Connection | None = None
        try:
            while True:
                while self._queue:
                    batch = self._take()
                    conn = await self._write(batch, conn)
                batch = []
                if conn is None:
                    break
                await self._more_within(_LINGER)
                # Checked whatever woke it: a request queued just as the wait ran out
                # (its insert found the wait over) is in the queue all the same.
                if not self._queue:
                    break
        finally:
            self._wakeup = None
            # Only when this task itself is cancelled (the event loop is closing) can a
            # request still be waiting here: it must not wait forever. Done before the
            # release below lets other tasks run: a request queued meanwhile starts a
            # flush of its own and must not be touched by this one.
            self._flushing = None
            left = [*batch, *self._queue]
            self._queue.clear()
            for waiting in left:
                if not waiting.future.done():
                    waiting.future.cancel()
            await self._release(conn)

    async def _more_within(self, seconds: float) -> None:
        """Wait until a request is queued or ``seconds`` have passed."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._wakeup = waiter
        timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._wakeup = None

    def _take(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        size = 0
        queue = self._queue
        while queue and len(batch) < _MAX_ROWS:
            cost = len(queue[0].row[11])
            if batch and size + cost > _MAX_BYTES:
                break
            batch.append(queue.popleft())
            size += cost
        return batch

    async def _write(
        self, batch: list[_Waiting], conn: asyncpg.Connection | None
    ) -> asyncpg.Connection | None:
        """Insert ``batch`` and resolve its requests; return the connection if still good."""
        try:
            with translate_errors(self.schema):
                if conn is None:
                    conn = await self.pool.acquire(timeout=self.acquire_timeout)
                assert conn is not None
                if len(batch) == 1:
                    position = await conn.fetchval(self._insert_one, *batch[0].row)
                    written = {batch[0].row[0]} if position is not None else set()
                else:
                    columns = list(zip(*(waiting.row for waiting in batch), strict=True))
                    records = await conn.fetch(self._insert_many, *columns)
                    written = {record[0] for record in records}
        except DatabaseError as exc:
            if conn is not None and type(exc) is DatabaseError:
                # The database answered: the statement failed, the connection is fine.
                if len(batch) == 1:
                    _fail(batch, exc)
                    return conn
                # A row of its own spoiled the statement: each row alone, so that only
                # that row's request fails.
                for waiting in batch:
                    conn = await self._write([waiting], conn)
                return conn
            _fail(batch, exc)
            await self._release(conn)
            return None
        except Exception as exc:
            _fail(batch, exc)
            await self._release(conn)
            return None
        for waiting in batch:
            event_id = waiting.row[0]
            # The same event_id twice in one batch: the first request wrote it.
            if not waiting.future.done():  # its caller may have been cancelled
                waiting.future.set_result(event_id in written)
            written.discard(event_id)
        return conn

    async def _release(self, conn: asyncpg.Connection | None) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                await self.pool.release(conn)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(batch: list[_Waiting], exc: Exception) -> None:
    for waiting in batch:
        if not waiting.future.done():
            waiting.future.set_exception(exc)
