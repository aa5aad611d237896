"""``dispatch-aio worker MODULE:ATTRIBUTE``: run a Consumer until SIGTERM.

``ATTRIBUTE`` is a Consumer, or a factory ``(pool) -> Consumer`` (sync or async) that
the worker calls with a pool of its own: ``--pool-size`` connections, by default
``concurrency + 2``. ``--concurrency`` overrides the consumer's. Logs go to stderr
(``--log-format text|json``), with a throughput and lag line every ``--stats-interval``
seconds. Exit 0 after a drain on SIGTERM, 1 when the consumer fails or cannot start
(a pool too small for it included), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import os
import sys
from typing import Any

from .._errors import InvalidDsnError
from . import arguments
from .context import EXIT_OK, EXIT_USAGE, CommandError, Context
from .logs import LOG_FORMATS, configure_logging
from .stats import report_stats

__all__ = ["add_runtime_options", "configure", "import_module", "load_target"]

#: Connections beyond the workers: the fetch loop and the LISTEN connection.
RESERVED_CONNECTIONS = 2
DEFAULT_CONCURRENCY = 16


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``worker``."""
    parser.add_argument(
        "target",
        metavar="MODULE:ATTRIBUTE",
        help="a Consumer, or a function (pool) -> Consumer, sync or async",
    )
    parser.add_argument(
        "--pool-size",
        type=arguments.int_between(1, 1000),
        default=None,
        help="connections of the pool made for a factory (default: concurrency + 2)",
    )
    parser.add_argument(
        "--concurrency",
        type=arguments.int_between(1, 512),
        default=None,
        help="handler workers, overriding the consumer's own setting",
    )
    parser.add_argument(
        "--stats-interval",
        type=arguments.int_between(0, 86_400),
        default=60,
        metavar="SECONDS",
        help="log throughput and lag every SECONDS (default 60; 0 turns it off)",
    )
    add_runtime_options(parser)
    parser.set_defaults(handler=_run_worker)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, shared by the long-running commands."""
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (default INFO; DEBUG adds a line per handled event)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object per line (default text)",
    )


def import_module(module_name: str) -> Any:
    """Import ``module_name`` with the working directory importable; a usage error if not."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name!r}: {exc}", EXIT_USAGE) from exc


def load_target(target: str) -> Any:
    """The object ``MODULE:ATTRIBUTE`` names; the working directory is importable."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise CommandError(f"expected MODULE:ATTRIBUTE, got {target!r}", EXIT_USAGE)
    value: Any = import_module(module_name)
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CommandError(
                f"{module_name!r} has no attribute {attribute!r}", EXIT_USAGE
            ) from None
    return value


async def _run_worker(args: argparse.Namespace, ctx: Context) -> int:
    # Imported here, not at the top: the parser (--help, the other commands) needs neither.
    from .._consume import Consumer
    from .._pool import CONNECT_TIMEOUT, open_pool

    configure_logging(args.log_level, args.log_format, ctx.err, ctx.dsn)
    target = load_target(args.target)
    if isinstance(target, Consumer):
        if args.pool_size is not None:
            raise CommandError(
                f"{args.target} is a Consumer with its own pool: --pool-size applies to a "
                "factory (pool) -> Consumer only",
                EXIT_USAGE,
            )
        await target.pool  # initialise a pool made outside a running loop; no-op otherwise
        await _run(target, args)
        return EXIT_OK
    if not callable(target):
        raise CommandError(f"{args.target} is neither a Consumer nor a factory", EXIT_USAGE)
    dsn = ctx.require_dsn()
    size = args.pool_size or (args.concurrency or DEFAULT_CONCURRENCY) + RESERVED_CONNECTIONS
    try:
        pool = await open_pool(dsn, min_size=1, max_size=size)
    except InvalidDsnError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    try:
        made = target(pool) if inspect.signature(target).parameters else target()
        consumer = await made if inspect.isawaitable(made) else made
        if not isinstance(consumer, Consumer):
            raise CommandError(f"{args.target} returned {type(consumer).__name__}, not a Consumer")
        await _run(consumer, args)
    finally:
        await asyncio.wait_for(pool.close(), timeout=CONNECT_TIMEOUT)
    return EXIT_OK


async def _run(consumer: Any, args: argparse.Namespace) -> None:
    if args.concurrency is not None:
        # Before start: nothing has read the setting yet.
        consumer.config = consumer.config.model_copy(update={"concurrency": args.concurrency})
    stats = (
        asyncio.create_task(report_stats(consumer, args.stats_interval))
        if args.stats_interval
        else None
    )
    try:
        await consumer.run()
    finally:
        if stats is not None:
            stats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats
