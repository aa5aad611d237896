"""Opening a pool from a DSN, with errors that never show the password.

Every application inside the library (the CLI's subcommands, the worker, the demo)
opens its pool here, so the readable connection errors and the redaction live in one
place.
"""

from __future__ import annotations

import asyncpg

from ._dsn import redact
from ._errors import DatabaseUnavailableError, InvalidDsnError

__all__ = ["CONNECT_TIMEOUT", "open_pool"]

#: Seconds to wait for the database to answer before giving up.
CONNECT_TIMEOUT = 10.0


async def open_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    command_timeout: float | None = None,
) -> asyncpg.Pool:
    """A connected asyncpg pool on ``dsn``; the caller closes it.

    Raises InvalidDsnError for a DSN that does not parse, DatabaseUnavailableError when
    nothing usable answers (unreachable, login refused, no such database). Messages name
    the DSN with its password masked, and mask the password wherever the driver repeats it.
    Cancellation propagates; a half-made pool is closed by asyncpg itself.
    """
    shown = redact(dsn, dsn)
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            command_timeout=command_timeout,
        )
    except ValueError as exc:  # asyncpg's ClientConfigurationError is a ValueError too
        reason = redact(str(exc).removeprefix("invalid DSN: "), dsn)
        raise InvalidDsnError(f"invalid DSN {shown}: {reason}") from exc
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise DatabaseUnavailableError(
            f"the database at {shown} refused the login: {redact(str(exc), dsn)}"
        ) from exc
    except asyncpg.InvalidCatalogNameError as exc:
        raise DatabaseUnavailableError(
            f"no such database at {shown}: {redact(str(exc), dsn)}"
        ) from exc
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = redact(str(exc), dsn) or type(exc).__name__
        raise DatabaseUnavailableError(
            f"cannot reach the database at {shown}: {reason} "
            "(is the server running, and are --dsn / DATABASE_URL right?)"
        ) from exc
    return pool
