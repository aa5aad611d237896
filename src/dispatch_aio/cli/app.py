"""The ``dispatch-aio`` parser and ``main``: parse, check, run one handler, exit."""

from __future__ import annotations

import argparse
import asyncio
import os
import traceback
from collections.abc import Sequence

from .._dsn import redact
from .._errors import DispatchError, InvalidDsnError, InvalidIdentifierError, UsageError
from .._identifiers import validate_schema_name
from . import consumers, contracts, demo, dlq, fanout, migrate, prune, status, worker
from .context import EXIT_FAILURE, EXIT_USAGE, CommandError, Context, Handler
from .parser import CommandParser, Subcommand, add_command, global_options

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: The commands, in the order ``--help`` lists them.
SUBCOMMANDS: dict[str, Subcommand] = {
    "migrate": Subcommand("create or upgrade the dispatcher tables", migrate.configure),
    "contracts": Subcommand("make, extend and check event contracts", contracts.configure),
    "dlq": Subcommand("list, show, resolve and replay dead letters", dlq.configure),
    "status": Subcommand("consumer lag, dead letters and horizon holders", status.configure),
    "consumers": Subcommand("forget a retired consumer", consumers.configure),
    "worker": Subcommand("run a Consumer until SIGTERM", worker.configure),
    "fanout": Subcommand("deliver events to other services until SIGTERM", fanout.configure),
    "demo": Subcommand("run the demo scenario on an embedded PostgreSQL", demo.configure),
    "prune": Subcommand("delete old events every consumer has passed", prune.configure),
}


def build_parser() -> argparse.ArgumentParser:
    """The whole ``dispatch-aio`` parser, built from :data:`SUBCOMMANDS`."""
    parser = CommandParser(
        prog="dispatch-aio",
        description="Operate dispatch-aio: migrations, workers, status, contracts, dead letters.",
        parents=[global_options(top_level=True)],
        epilog="Exit codes: 0 success, 1 failure, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, subcommand in SUBCOMMANDS.items():
        subcommand.configure(add_command(commands, name, help=subcommand.help))
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dispatch-aio")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dispatch-aio`` with ``argv`` (default: the process arguments); the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's own usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.explicit_dsn = args.dsn
    dsn = args.dsn if args.dsn is not None else os.environ.get("DATABASE_URL")
    ctx = Context(dsn=dsn or None, schema=args.schema, debug=args.debug)
    try:
        validate_schema_name(ctx.schema)
        handler: Handler = args.handler
        # A command may choose its event loop from its arguments (fanout --loop).
        choose = getattr(args, "loop_factory", None)
        with asyncio.Runner(loop_factory=None if choose is None else choose(args)) as runner:
            return runner.run(handler(args, ctx))
    except KeyboardInterrupt:
        return _fail(ctx, "interrupted", 130)
    except CommandError as exc:
        return _fail(ctx, str(exc), exc.exit_code)
    except (UsageError, InvalidIdentifierError, InvalidDsnError) as exc:
        return _fail(ctx, str(exc), EXIT_USAGE)
    except DispatchError as exc:
        return _fail(ctx, str(exc), EXIT_FAILURE)
    except Exception as exc:
        message = f"unexpected {type(exc).__name__}: {exc}"
        if not ctx.debug:
            message += " (run with --debug for the traceback)"
        return _fail(ctx, message, EXIT_FAILURE)


def _fail(ctx: Context, message: str, exit_code: int) -> int:
    # Whatever reached here may quote the DSN or a driver message repeating its password.
    if ctx.debug:
        print(redact(traceback.format_exc(), ctx.dsn).rstrip(), file=ctx.err)
    print(f"error: {' '.join(redact(message, ctx.dsn).split())}", file=ctx.err)
    return exit_code
