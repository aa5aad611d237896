"""``dispatch-aio demo``: the demo scenario on an embedded PostgreSQL (or ``--dsn``)."""

from __future__ import annotations

import argparse

from . import arguments
from .context import EXIT_FAILURE, EXIT_OK, Context

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``demo``."""
    parser.add_argument(
        "--events",
        type=arguments.int_between(1, 1_000_000),
        default=200,
        help="events to publish (default 200)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the database (and its schema) in place and print the DSN",
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run the demo; exit 1 when its checks fail."""
    from ..demo import run_demo

    # Only an explicit --dsn: the demo never writes into $DATABASE_URL by surprise.
    summary = await run_demo(
        getattr(args, "explicit_dsn", None), events=args.events, keep=args.keep, out=ctx.out
    )
    return EXIT_OK if summary.ok else EXIT_FAILURE
