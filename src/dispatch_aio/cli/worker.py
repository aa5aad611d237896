"""``dispatch-aio worker MODULE:ATTRIBUTE``: run a Consumer until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from .._dsn import redact
from .._errors import InvalidDsnError
from .._pool import CONNECT_TIMEOUT, open_pool
from . import arguments
from .context import EXIT_OK, EXIT_USAGE, CommandError, Context

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``worker``."""
    _configure_worker(parser)


def _configure_worker(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")
    parser.set_defaults(handler=_run_worker)


def _load_target(target: str) -> Any:
    import importlib
    import inspect

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise CommandError(f"expected MODULE:ATTRIBUTE, got {target!r}", EXIT_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name!r}: {exc}", EXIT_USAGE) from exc
    value = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CommandError(
                f"{module_name!r} has no attribute {attribute!r}", EXIT_USAGE
            ) from None
    if not (callable(value) or inspect.isawaitable(value)) and not hasattr(value, "run"):
        raise CommandError(f"{target} is neither a Consumer nor a factory", EXIT_USAGE)
    return value


class _RedactingFormatter(logging.Formatter):
    """Formats as the handler did, then masks database passwords (see _dsn.redact)."""

    def __init__(self, inner: logging.Formatter | None, dsn: str | None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()
        self._dsn = dsn

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._inner.format(record), self._dsn)


def _redact_logs(dsn: str | None) -> None:
    """Mask passwords in everything the root logger's handlers write (driver errors too)."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, _RedactingFormatter):
            handler.setFormatter(_RedactingFormatter(handler.formatter, dsn))


async def _run_worker(args: argparse.Namespace, ctx: Context) -> int:
    import inspect

    from .._consumer import Consumer

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=ctx.err,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _redact_logs(ctx.dsn)
    target = _load_target(args.target)
    if isinstance(target, Consumer):
        pool = target.pool
        await pool  # initialise a pool made outside a running loop; no-op otherwise
        await target.run()
        return EXIT_OK
    dsn = ctx.require_dsn()
    size = args.pool_size or 18
    try:
        pool = await open_pool(dsn, min_size=1, max_size=size)
    except InvalidDsnError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    try:
        parameters = inspect.signature(target).parameters
        made = target(pool) if parameters else target()
        consumer = await made if inspect.isawaitable(made) else made
        if not isinstance(consumer, Consumer):
            raise CommandError(f"{args.target} returned {type(consumer).__name__}, not a Consumer")
        await consumer.run()
    finally:
        await asyncio.wait_for(pool.close(), timeout=CONNECT_TIMEOUT)
    return EXIT_OK
