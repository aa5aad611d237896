"""The pieces every command's parser is built from: global options and ``add_command``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

__all__ = ["CommandParser", "Subcommand", "add_command", "global_options"]


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2), like all others."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: <message>`` and where to find help; exit 2."""
        line = " ".join(message.split())
        self.exit(2, f"error: {line} (see: {self.prog} --help)\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """Exit through SystemExit, writing ``message`` to stderr."""
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)


@dataclass(frozen=True)
class Subcommand:
    """A top-level command: its one-line help and the function that builds its parser."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]


def global_options(*, top_level: bool) -> argparse.ArgumentParser:
    """--dsn, --schema, --debug; below the top level they only override when given."""
    parser = CommandParser(add_help=False)
    group = parser.add_argument_group("global options")

    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    group.add_argument(
        "--dsn",
        default=default(None),
        help="PostgreSQL DSN, postgresql://user:password@host:port/database "
        "(default: $DATABASE_URL)",
    )
    group.add_argument(
        "--schema",
        default=default("public"),
        help="schema holding the dispatcher tables (default: public)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="print tracebacks of errors",
    )
    return parser


_SUBCOMMAND_OPTIONS = global_options(top_level=False)


def add_command(
    subparsers: argparse._SubParsersAction[Any],
    name: str,
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add a command parser that also accepts the global options after its name."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        parents=[_SUBCOMMAND_OPTIONS],
    )
    return parser
