"""``dispatch-aio fanout CONFIG``: deliver events to other services' inboxes until SIGTERM.

A thin wrapper over :func:`dispatch_aio.fanout.run_fanout`: loads the fan-out
configuration (JSON, or TOML by the ``.toml`` suffix), opens a pool sized for every
endpoint and runs one consumer per endpoint. SIGTERM or SIGINT drains (POSTs in flight
finish and commit), a second one aborts. Exit codes as ``worker``: 0 after a drain, 1
when a consumer fails or the database does not answer, 2 for a configuration that does
not load (a missing file, a bad field, an endpoint the SSRF guard refuses).

``--loop`` picks the event loop the worker runs on: uvloop (the default when it is
installed) or asyncio's own. uvloop, written in C, spends less CPU on each POST and each
database round trip; it is not a dependency of dispatch-aio (``pip install uvloop``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from .._errors import ConfigurationError, InvalidDsnError
from .context import EXIT_OK, EXIT_USAGE, CommandError, Context
from .logs import configure_logging
from .worker import add_runtime_options

__all__ = ["LOOPS", "configure", "event_loop_factory", "loop_name"]

logger = logging.getLogger("dispatch_aio.fanout")

#: The choices of ``--loop``.
LOOPS = ("auto", "asyncio", "uvloop")


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory ``--loop choice`` asks for; None for asyncio's own loop.

    ``auto`` is uvloop when it can be imported, else asyncio. ``uvloop`` when it cannot
    be imported is a usage error that says how to install it.
    """
    if choice not in LOOPS:
        raise CommandError(f"--loop must be one of {', '.join(LOOPS)}, not {choice!r}", EXIT_USAGE)
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "auto":
            return None
        raise CommandError(
            f"--loop uvloop: uvloop cannot be imported ({exc}); install it with "
            "'pip install uvloop', or run with --loop asyncio",
            EXIT_USAGE,
        ) from exc
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which event loop ``loop`` is."""
    return "uvloop" if type(loop).__module__.partition(".")[0] == "uvloop" else "asyncio"


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``fanout``."""
    parser.add_argument(
        "config",
        metavar="CONFIG",
        type=Path,
        help="fan-out configuration, JSON or TOML (see docs/cross-service.md)",
    )
    parser.add_argument(
        "--loop",
        default="auto",
        choices=LOOPS,
        help="event loop: auto (default) is uvloop when installed, else asyncio; "
        "uvloop needs 'pip install uvloop'",
    )
    add_runtime_options(parser)
    parser.set_defaults(handler=run, loop_factory=lambda args: event_loop_factory(args.loop))


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
    logger.info("fan-out on the %s event loop", loop_name(asyncio.get_running_loop()))
    try:
        await run_fanout(dsn, config)
    except InvalidDsnError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    return EXIT_OK
