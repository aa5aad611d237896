"""Dead letters: list, inspect, resolve and replay the events a consumer gave up on.

A dead letter is a row of ``dispatcher_dead_letter`` written by a consumer in the same
transaction as its ``dead_lettered`` dedup marker. This module is the operator's side:
it never handles events itself. ``replay`` only marks a row ``pending`` and wakes the
consumers (NOTIFY on the schema's replay channel); the consumer named by the row handles
the event again, once, and records how it ended (``succeeded`` resolves the row,
``failed`` keeps it active with ``replay_error``).

Every method takes an optional ``tenant_id``: given, each read and write is limited to
that tenant's rows and a row of another tenant behaves exactly as a missing one.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, computed_field

from ._db import translate_errors
from ._errors import DeadLetterAlreadyResolvedError, DeadLetterNotFoundError, UsageError
from ._identifiers import validate_schema_name
from ._ids import is_prefixed_id
from ._sql import queries

__all__ = [
    "MAX_PAGE_SIZE",
    "DeadLetter",
    "DeadLetterPage",
    "DeadLetterState",
    "DeadLetters",
    "ReplayStatus",
]

#: The largest page ``DeadLetters.list`` returns.
MAX_PAGE_SIZE = 500

ReplayStatus = Literal["pending", "succeeded", "failed"]
#: A dead letter's state: still to deal with (``active``, ``replay_pending``,
#: ``replay_failed``), or closed (``replayed`` by its consumer, ``resolved`` by hand).
DeadLetterState = Literal["active", "replay_pending", "replay_failed", "replayed", "resolved"]


class DeadLetter(BaseModel):
    """One dead letter: the event, the last error, and what operators did about it."""

    model_config = ConfigDict(frozen=True)

    dead_letter_id: str
    consumer: str
    event_id: str
    event_type: str
    schema_version: int | None
    tenant_id: str | None
    subject: str | None
    envelope: dict[str, Any]
    error_type: str
    error_message: str
    error_traceback: str | None
    attempts: int
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None
    replay_status: ReplayStatus | None
    replay_requested_at: datetime | None
    replayed_by: str | None
    replayed_at: datetime | None
    replay_error: str | None

    @property
    def is_resolved(self) -> bool:
        """True once an operator (or a successful replay) resolved the row."""
        return self.resolved_at is not None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def state(self) -> DeadLetterState:
        """Where the row stands, in one word: a replay that succeeded is ``replayed``,
        a row an operator closed by hand is ``resolved``."""
        if self.resolved_at is not None:
            return "replayed" if self.replay_status == "succeeded" else "resolved"
        if self.replay_status == "pending":
            return "replay_pending"
        if self.replay_status == "failed":
            return "replay_failed"
        return "active"


class DeadLetterPage(BaseModel):
    """One page of dead letters, newest first.

    ``next_cursor`` is opaque; pass it as ``before`` to get the next page. It is None on
    the last page.
    """

    model_config = ConfigDict(frozen=True)

    items: tuple[DeadLetter, ...]
    next_cursor: str | None


class DeadLetters:
    """The dead letters of one schema, for operators.

    Each method runs on a connection of ``pool`` in its own transaction and commits
    before it returns; none of them takes a caller's connection.
    """

    def __init__(self, pool: asyncpg.Pool, schema: str = "public") -> None:
        """Bind to ``pool`` and ``schema`` (validated here; InvalidIdentifierError)."""
        validate_schema_name(schema)
        self._pool = pool
        self._schema = schema
        self._q = queries(schema)

    @property
    def schema(self) -> str:
        """The schema holding ``dispatcher_dead_letter``."""
        return self._schema

    async def list(
        self,
        consumer: str | None,
        *,
        include_resolved: bool = False,
        limit: int = 50,
        before: str | None = None,
        tenant_id: str | None = None,
    ) -> DeadLetterPage:
        """A page of a consumer's dead letters, newest first (active ones unless asked).

        ``consumer=None`` lists every consumer's. One read-only statement. Paging is by
        keyset on ``(created_at, dead_letter_id)``: pass the previous page's
        ``next_cursor`` as ``before``; rows added meanwhile do not shift later pages.
        ``limit`` is 1 to 500 and a cursor must come from a previous page, else
        UsageError.
        """
        if consumer is not None:
            _check_text("consumer", consumer)
        _check_tenant(tenant_id)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise UsageError(f"limit must be an int, got {type(limit).__name__}")
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise UsageError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
        after_created, after_id = (None, None) if before is None else decode_cursor(before)
        q = self._q
        with translate_errors(self._schema):
            if consumer is None:
                query = (
                    q.dead_letters_list_all_every
                    if include_resolved
                    else q.dead_letters_list_active_every
                )
                rows = await self._pool.fetch(query, after_created, after_id, tenant_id, limit + 1)
            else:
                query = q.dead_letters_list_all if include_resolved else q.dead_letters_list_active
                rows = await self._pool.fetch(
                    query, consumer, after_created, after_id, tenant_id, limit + 1
                )
        items = tuple(_from_row(row) for row in rows[:limit])
        next_cursor = encode_cursor(items[-1]) if len(rows) > limit else None
        return DeadLetterPage(items=items, next_cursor=next_cursor)

    async def get(self, dead_letter_id: str, *, tenant_id: str | None = None) -> DeadLetter:
        """The dead letter ``dead_letter_id``.

        One read-only statement. Raises DeadLetterNotFoundError when there is no such
        row (for this tenant), and UsageError when ``dead_letter_id`` is not a
        ``dlq_<UUIDv7>`` id at all, so a typo is told apart from a missing row.
        """
        _check_id(dead_letter_id)
        _check_tenant(tenant_id)
        with translate_errors(self._schema):
            row = await self._pool.fetchrow(self._q.dead_letter_get, dead_letter_id, tenant_id)
        if row is None:
            raise DeadLetterNotFoundError(dead_letter_id)
        return _from_row(row)

    async def resolve(
        self,
        dead_letter_id: str,
        *,
        resolved_by: str,
        note: str | None = None,
        tenant_id: str | None = None,
    ) -> DeadLetter:
        """Mark a dead letter resolved by ``resolved_by``; return the updated row.

        One-shot, as one conditional UPDATE committed on its own: of two concurrent
        calls exactly one wins and the other raises DeadLetterAlreadyResolvedError, as
        does any later call. A pending replay is cancelled. Raises
        DeadLetterNotFoundError, or UsageError for a malformed id or an empty
        ``resolved_by``.
        """
        _check_id(dead_letter_id)
        _check_text("resolved_by", resolved_by)
        if note is not None:
            _check_text("note", note, allow_empty=True)
        _check_tenant(tenant_id)
        with translate_errors(self._schema):
            row = await self._pool.fetchrow(
                self._q.dead_letter_resolve, dead_letter_id, tenant_id, resolved_by, note
            )
            if row is not None:
                return _from_row(row)
            # Nothing updated: either there is no such row or it was resolved already.
            existing = await self._pool.fetchrow(self._q.dead_letter_get, dead_letter_id, tenant_id)
        if existing is None:
            raise DeadLetterNotFoundError(dead_letter_id)
        raise DeadLetterAlreadyResolvedError(dead_letter_id)

    async def replay(
        self, dead_letter_id: str, *, replayed_by: str, tenant_id: str | None = None
    ) -> DeadLetter:
        """Ask the row's consumer to handle the event again; return the updated row.

        In one transaction: marks the row ``replay_status='pending'`` (recording
        ``replayed_by`` and the time, clearing an earlier ``replay_error``) and
        notifies the replay channel with the consumer's name, so the wake-up is sent
        only if the marking commits. A row already pending stays as it is (idempotent).
        Raises DeadLetterAlreadyResolvedError for a resolved row,
        DeadLetterNotFoundError, or UsageError for a malformed id.
        """
        _check_id(dead_letter_id)
        _check_text("replayed_by", replayed_by)
        _check_tenant(tenant_id)
        with translate_errors(self._schema):
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    self._q.dead_letter_replay, dead_letter_id, tenant_id, replayed_by
                )
                if row is None:
                    row = await conn.fetchrow(self._q.dead_letter_get, dead_letter_id, tenant_id)
                    if row is None:
                        raise DeadLetterNotFoundError(dead_letter_id)
                    if row["resolved_at"] is not None:
                        raise DeadLetterAlreadyResolvedError(dead_letter_id)
                # Pending now (freshly or already): a repeated wake-up costs the
                # consumer one query and covers a notification it may have missed.
                await conn.execute(self._q.dead_letter_notify_replay, row["consumer"])
        return _from_row(row)

    async def replay_all(
        self,
        consumer: str,
        *,
        replayed_by: str,
        event_type: str | None = None,
        tenant_id: str | None = None,
    ) -> int:
        """Mark every active dead letter of ``consumer`` for replay; return how many.

        In one transaction: one UPDATE marks the active rows not yet pending (only
        those of ``event_type`` when given), then the replay channel is notified if
        any were marked. Rows already pending are left alone and not counted.
        """
        _check_text("consumer", consumer)
        _check_text("replayed_by", replayed_by)
        if event_type is not None:
            _check_text("event_type", event_type)
        _check_tenant(tenant_id)
        with translate_errors(self._schema):
            async with self._pool.acquire() as conn, conn.transaction():
                marked = int(
                    await conn.fetchval(
                        self._q.dead_letters_replay_all,
                        consumer,
                        event_type,
                        replayed_by,
                        tenant_id,
                    )
                )
                if marked:
                    await conn.execute(self._q.dead_letter_notify_replay, consumer)
        return marked

    def __repr__(self) -> str:
        return f"<DeadLetters schema={self._schema!r}>"


# --------------------------------------------------------------------------- cursors


def encode_cursor(item: DeadLetter) -> str:
    """The opaque cursor that continues a listing after ``item``."""
    raw = f"{item.created_at.isoformat()}|{item.dead_letter_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, dead_letter_id)`` keyset of ``cursor``; UsageError if invalid."""
    invalid = UsageError(
        f"invalid cursor {cursor[:40]!r}: pass the next_cursor of a previous page unchanged"
    )
    if not isinstance(cursor, str) or not cursor or len(cursor) > 200:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_text, dead_letter_id = raw.split("|")
        created_at = datetime.fromisoformat(created_text)
        # A cursor this code wrote holds a UTC time; an offset that pushes the time out
        # of datetime's range (0001-01-01T00:00+14:00) only comes from a crafted one.
        created_at = created_at.astimezone(UTC) if created_at.tzinfo is not None else created_at
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise invalid from None
    if created_at.tzinfo is None or not is_prefixed_id(dead_letter_id, "dlq"):
        raise invalid
    return created_at, dead_letter_id


# --------------------------------------------------------------------------- helpers


def _from_row(row: asyncpg.Record) -> DeadLetter:
    data = dict(row)
    data["envelope"] = json.loads(data["envelope"])
    return DeadLetter.model_validate(data)


def _check_id(dead_letter_id: str) -> None:
    if not isinstance(dead_letter_id, str) or not is_prefixed_id(dead_letter_id, "dlq"):
        shown = dead_letter_id[:60] if isinstance(dead_letter_id, str) else dead_letter_id
        raise UsageError(
            f"{shown!r} is not a dead-letter id: expected dlq_ followed by a lower-case UUIDv7"
        )


def _check_tenant(tenant_id: str | None) -> None:
    if tenant_id is not None:
        _check_text("tenant_id", tenant_id)


def _check_text(name: str, value: str, *, allow_empty: bool = False) -> None:
    """Refuse what PostgreSQL text cannot hold before it reaches the driver."""
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise UsageError(f"{name} must not be empty")
    problem = text_problem(value)
    if problem:
        raise UsageError(f"{name} {problem}")


def text_problem(value: str) -> str | None:
    """Why PostgreSQL cannot store ``value`` as text (NUL, lone surrogate), or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (it holds a lone surrogate)"
    return None
