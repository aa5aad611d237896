"""The one place driver errors become dispatch-aio errors (by SQLSTATE and class)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from .._errors import (
    DatabaseError,
    DatabaseUnavailableError,
    DispatchError,
    SchemaNotMigratedError,
)
from ._driver import INFRASTRUCTURE_ERRORS

__all__ = ["CONNECTION_ERRORS", "translate_errors"]

#: Exceptions that mean the connection, not the statement, failed (see ``_driver``).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = INFRASTRUCTURE_ERRORS


@contextlib.contextmanager
def translate_errors(schema: str) -> Iterator[None]:
    """Re-raise driver errors as DatabaseError subclasses, keeping the original as cause."""
    try:
        yield
    except DispatchError:
        raise
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError) as exc:
        option = "" if schema == "public" else f" --schema {schema}"
        raise SchemaNotMigratedError(
            f"dispatcher tables are missing in schema {schema!r}: "
            f"run dispatch-aio migrate --dsn <DSN>{option}"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"database error {exc.sqlstate}: {exc}") from exc
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc
