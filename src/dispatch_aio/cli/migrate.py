"""``dispatch-aio migrate``: create or upgrade the dispatcher tables."""

from __future__ import annotations

import argparse

from .context import EXIT_OK, Context

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``migrate``."""
    parser.add_argument(
        "--no-notify",
        action="store_true",
        help="poll-only mode: drop the NOTIFY trigger (PgBouncer in transaction pooling)",
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Apply the pending migrations and say where the schema stands."""
    from .._db import translate_errors
    from .._migrate import migrate
    from .._sql import migrations

    ctx.progress(f"migrating schema {ctx.schema!r} ...")
    async with ctx.pool() as pool:
        with translate_errors(ctx.schema):
            result = await migrate(pool, ctx.schema, notify=not args.no_notify)
    names = {m.version: m.name for m in migrations()}
    for version in result.applied:
        ctx.print(f"applied {version:04d}_{names[version]}")
    state = "now at" if result.applied else "already at"
    notify = "NOTIFY on" if result.notify else "poll-only (NOTIFY trigger removed)"
    ctx.print(f"schema {result.schema!r} {state} version {result.version}; {notify}")
    return EXIT_OK
