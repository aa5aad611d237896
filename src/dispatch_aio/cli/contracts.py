"""``dispatch-aio contracts check``: load a contracts directory, list every problem."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from .._errors import RegistryError
from .._registry import Registry
from .context import EXIT_OK, CommandError, Context
from .parser import add_command

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Actions of ``contracts``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = add_command(actions, "check", help="load a contracts directory and list its problems")
    check.add_argument(
        "path",
        nargs="?",
        help="contracts directory (default: $DISPATCH_AIO_CONTRACTS, else the bundled copy)",
    )
    check.set_defaults(handler=run_check)


async def run_check(args: argparse.Namespace, ctx: Context) -> int:
    """Load and compile every contract; print each problem."""
    # Loading reads and compiles every schema file: blocking work, off the event loop.
    return await asyncio.to_thread(_check_contracts, args, ctx)


def _check_contracts(args: argparse.Namespace, ctx: Context) -> int:
    if args.path is not None and not Path(args.path).is_dir():
        what = "is not a directory" if Path(args.path).exists() else "does not exist"
        raise CommandError(f"contracts directory {args.path} {what}")
    try:
        registry = Registry.load(args.path)
    except RegistryError as exc:
        for problem in exc.problems:
            ctx.print(problem)
        where = args.path or "the default contracts directory"
        raise CommandError(f"{len(exc.problems)} problem(s) in {where}") from exc
    event_types = registry.event_types()
    versions = sum(len(registry.versions(t)) for t in event_types)
    ctx.print(f"ok: {len(event_types)} event types, {versions} payload schemas in {registry.root}")
    return EXIT_OK
