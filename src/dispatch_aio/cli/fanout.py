"""``dispatch-aio fanout CONFIG``: deliver events to other services' inboxes until SIGTERM.

A thin wrapper over :func:`dispatch_aio.fanout.run_fanout`: loads the fan-out
configuration (JSON, or TOML by the ``.toml`` suffix), opens a pool sized for every
endpoint and runs one consumer per endpoint. SIGTERM or SIGINT drains (POSTs in flight
finish and commit), a second one aborts. Exit codes as ``worker``: 0 after a drain, 1
when a consumer fails or the database does not answer, 2 for a configuration that does
not load (a missing file, a bad field, an endpoint the SSRF guard refuses).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._errors import ConfigurationError, InvalidDsnError
from .context import EXIT_OK, EXIT_USAGE, CommandError, Context
from .logs import configure_logging
from .worker import add_runtime_options

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``fanout``."""
    parser.add_argument(
        "config",
        metavar="CONFIG",
        type=Path,
        help="fan-out configuration, JSON or TOML (see docs/cross-service.md)",
    )
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run the fan-out until SIGTERM; every endpoint's consumer drains."""
    try:
        from ..fanout import run_fanout
    except ImportError as exc:  # httpx is the [delivery] extra's
        raise CommandError(
            f"fan-out needs the delivery extra ({exc}): pip install 'dispatch-aio[delivery]'"
        ) from exc
    from .._delivery.config import FanoutConfig

    configure_logging(args.log_level, args.log_format, ctx.err, ctx.dsn)
    dsn = ctx.require_dsn()
    try:
        config = FanoutConfig.load(args.config)
    except ConfigurationError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    if ctx.schema != "public":  # --schema given: it names the dispatcher tables too
        if config.db_schema not in ("public", ctx.schema):
            raise CommandError(
                f"--schema {ctx.schema} disagrees with the configuration's schema "
                f"{config.db_schema}: give one of them",
                EXIT_USAGE,
            )
        config = config.model_copy(update={"db_schema": ctx.schema})
    try:
        await run_fanout(dsn, config)
    except InvalidDsnError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    return EXIT_OK
