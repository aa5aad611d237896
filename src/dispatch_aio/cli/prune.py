"""``dispatch-aio prune --older-than AGE``: delete old events every consumer has passed."""

from __future__ import annotations

import argparse

from . import arguments
from .context import EXIT_OK, Context

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``prune``."""
    parser.add_argument(
        "--older-than",
        type=arguments.duration,
        required=True,
        metavar="AGE",
        help="delete events older than this that every consumer has passed (e.g. 30d)",
    )
    parser.add_argument(
        "--batch-size",
        type=arguments.int_between(1, 1_000_000),
        default=5_000,
        help="rows per transaction",
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Delete in batches; report what went."""
    from .._retention import PruneResult, prune

    def progress(so_far: PruneResult) -> None:
        ctx.progress(f"  deleted {so_far.events:,} events so far ...")

    async with ctx.pool() as pool:
        result = await prune(
            pool,
            older_than=args.older_than,
            schema=ctx.schema,
            batch_size=args.batch_size,
            progress=progress,
        )
    ctx.print(
        f"deleted {result.events:,} events and {result.dedup_markers:,} dedup markers "
        f"older than {args.older_than}"
    )
    return EXIT_OK
