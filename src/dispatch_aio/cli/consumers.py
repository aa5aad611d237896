"""``dispatch-aio consumers forget NAME --yes``: remove a retired consumer."""

from __future__ import annotations

import argparse

from . import arguments
from .context import EXIT_OK, CommandError, Context
from .parser import add_command

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Actions of ``consumers``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    forget = add_command(
        actions,
        "forget",
        help="remove a retired consumer's cursors and dedup markers (refused while it runs)",
    )
    forget.add_argument("name", type=arguments.text, help="the consumer's name")
    forget.add_argument("--yes", action="store_true", help="confirm: without it nothing is removed")
    forget.set_defaults(handler=run_forget)


async def run_forget(args: argparse.Namespace, ctx: Context) -> int:
    """Forget one consumer, once confirmed and while none of its processes is live."""
    from .._operate.forget import forget_consumer

    if not args.yes:
        raise CommandError(
            f"this removes consumer {args.name!r}'s cursors and dedup markers for good "
            "(a consumer of that name would start over): run again with --yes",
            2,
        )
    async with ctx.pool() as pool:
        result = await forget_consumer(pool, args.name, schema=ctx.schema)
    if result.refused:
        raise CommandError(
            f"consumer {args.name!r} has {result.live} live process(es): stop them first "
            "(dispatch-aio status lists them), then forget it"
        )
    ctx.print(
        f"forgot {args.name}: {result.cursors} cursors, {result.markers} dedup markers, "
        f"{result.attempts} attempt records, {result.leases} leases"
    )
    return EXIT_OK
