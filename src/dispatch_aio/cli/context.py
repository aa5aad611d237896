"""What every command handler shares: exit codes, the one-line error, the context."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from .._errors import InvalidDsnError

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "Context",
    "Handler",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A failure the command line reports as one line, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Context:
    """What every handler gets besides its arguments: global options and the streams."""

    dsn: str | None
    schema: str
    debug: bool
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def require_dsn(self) -> str:
        """The DSN, or a usage error naming both ways to give one."""
        if not self.dsn:
            raise CommandError(
                "no database given: pass --dsn postgresql://... or set DATABASE_URL", EXIT_USAGE
            )
        return self.dsn

    @contextlib.asynccontextmanager
    async def pool(self, *, max_size: int = 4) -> AsyncIterator[asyncpg.Pool]:
        """A small pool on the DSN, closed on exit; connection failures become one line.

        The errors of :func:`~dispatch_aio._pool.open_pool` never show the password; an
        unparsable DSN is a usage error (exit 2).
        """
        # Imported here: asyncpg is for the commands that connect, not for --help.
        from .._pool import CONNECT_TIMEOUT, open_pool

        try:
            pool = await open_pool(self.require_dsn(), min_size=1, max_size=max_size)
        except InvalidDsnError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from exc
        try:
            yield pool
        finally:
            await asyncio.wait_for(pool.close(), timeout=CONNECT_TIMEOUT)

    def progress(self, message: str) -> None:
        """A progress line on stderr, only when a person is watching (a terminal)."""
        if self.err.isatty():
            print(message, file=self.err, flush=True)

    def print(self, *lines: str) -> None:
        """Lines of output on stdout."""
        for line in lines:
            print(line, file=self.out)

    def print_json(self, value: Any) -> None:
        """``value`` as indented JSON on stdout."""
        print(json.dumps(value, indent=2, ensure_ascii=False), file=self.out)


Handler = Callable[[argparse.Namespace, Context], Coroutine[Any, Any, int]]
