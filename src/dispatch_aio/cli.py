"""The ``dispatch-aio`` command line.

::

    dispatch-aio [--dsn DSN] [--schema NAME] [--debug] COMMAND ...

    migrate [--no-notify]                 create or upgrade the dispatcher tables
    contracts check [PATH]                load a contracts directory, list every problem
    dlq list --consumer C [...]           a consumer's dead letters, newest first
    dlq show ID                           one dead letter, envelope and traceback
    dlq resolve ID --by WHO [--note T]    mark it resolved (one-shot)
    dlq replay ID --by WHO                have its consumer handle the event again
    dlq replay-all --consumer C --by WHO  the same for every active dead letter

``--dsn`` defaults to ``$DATABASE_URL``; the global options may also follow the command.
Exit codes: 0 success, 1 failure, 2 usage error (bad arguments, a malformed id or DSN).
An error is one line on stderr (``error: ...``); ``--debug`` adds the traceback.

Works with the base install: nothing here imports the FastAPI integration.

Adding a command: each entry of :data:`SUBCOMMANDS` maps a name to a
:class:`Subcommand` whose ``configure`` fills in its parser and sets ``handler`` on
every leaf parser (``parser.set_defaults(handler=...)``). A handler is
``async def handler(args, ctx: Context) -> int`` and returns the exit code;
:meth:`Context.pool` gives it a connected pool with readable connection errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import asyncpg

from ._db import translate_errors
from ._deadletters import DeadLetter, DeadLetters
from ._errors import DispatchError, InvalidIdentifierError, RegistryError, UsageError
from ._identifiers import validate_schema_name
from ._migrate import migrate
from ._registry import Registry
from ._sql import migrations

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "SUBCOMMANDS",
    "CommandError",
    "Context",
    "Handler",
    "Subcommand",
    "add_command",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: Seconds to wait for the database to answer before giving up.
CONNECT_TIMEOUT = 10.0


class CommandError(Exception):
    """A failure the command line reports as one line, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Context:
    """What every handler gets besides its arguments: global options and the streams."""

    dsn: str | None
    schema: str
    debug: bool
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def require_dsn(self) -> str:
        """The DSN, or a usage error naming both ways to give one."""
        if not self.dsn:
            raise CommandError(
                "no database given: pass --dsn postgresql://... or set DATABASE_URL", EXIT_USAGE
            )
        return self.dsn

    @contextlib.asynccontextmanager
    async def pool(self) -> AsyncIterator[asyncpg.Pool]:
        """A small pool on the DSN, closed on exit; connection failures become one line."""
        dsn = self.require_dsn()
        shown = redact_dsn(dsn)
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, timeout=CONNECT_TIMEOUT)
        except ValueError as exc:  # asyncpg's ClientConfigurationError is a ValueError too
            reason = str(exc).removeprefix("invalid DSN: ")
            raise CommandError(f"invalid DSN {shown}: {reason}", EXIT_USAGE) from exc
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as e:
            raise CommandError(f"the database at {shown} refused the login: {e}") from e
        except asyncpg.InvalidCatalogNameError as exc:
            raise CommandError(f"no such database at {shown}: {exc}") from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = str(exc) or type(exc).__name__
            raise CommandError(
                f"cannot reach the database at {shown}: {reason} "
                "(is the server running, and are --dsn / DATABASE_URL right?)"
            ) from exc
        try:
            yield pool
        finally:
            await asyncio.wait_for(pool.close(), timeout=CONNECT_TIMEOUT)

    def progress(self, message: str) -> None:
        """A progress line on stderr, only when a person is watching (a terminal)."""
        if self.err.isatty():
            print(message, file=self.err, flush=True)

    def print(self, *lines: str) -> None:
        """Lines of output on stdout."""
        for line in lines:
            print(line, file=self.out)

    def print_json(self, value: Any) -> None:
        """``value`` as indented JSON on stdout."""
        print(json.dumps(value, indent=2, ensure_ascii=False), file=self.out)


Handler = Callable[[argparse.Namespace, Context], Coroutine[Any, Any, int]]


@dataclass(frozen=True)
class Subcommand:
    """A top-level command: its one-line help and the function that builds its parser."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]


# --------------------------------------------------------------------------- parser


def _global_options(*, top_level: bool) -> argparse.ArgumentParser:
    """--dsn, --schema, --debug; below the top level they only override when given."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("global options")

    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    group.add_argument(
        "--dsn",
        default=default(None),
        help="PostgreSQL DSN, postgresql://user:password@host:port/database "
        "(default: $DATABASE_URL)",
    )
    group.add_argument(
        "--schema",
        default=default("public"),
        help="schema holding the dispatcher tables (default: public)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="print tracebacks of errors",
    )
    return parser


_SUBCOMMAND_OPTIONS = _global_options(top_level=False)


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add a command parser that also accepts the global options after its name."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        parents=[_SUBCOMMAND_OPTIONS],
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole ``dispatch-aio`` parser, built from :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="dispatch-aio",
        description="Operate dispatch-aio: migrations, workers, status, contracts, dead letters.",
        parents=[_global_options(top_level=True)],
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


# --------------------------------------------------------------------------- migrate


def _configure_migrate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-notify",
        action="store_true",
        help="poll-only mode: drop the NOTIFY trigger (PgBouncer in transaction pooling)",
    )
    parser.set_defaults(handler=_run_migrate)


async def _run_migrate(args: argparse.Namespace, ctx: Context) -> int:
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


# --------------------------------------------------------------------------- contracts


def _configure_contracts(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = add_command(actions, "check", help="load a contracts directory and list its problems")
    check.add_argument(
        "path",
        nargs="?",
        help="contracts directory (default: $DISPATCH_AIO_CONTRACTS, else the bundled copy)",
    )
    check.set_defaults(handler=_run_contracts_check)


async def _run_contracts_check(args: argparse.Namespace, ctx: Context) -> int:
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


# --------------------------------------------------------------------------- dlq


def _configure_dlq(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def command(name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        sub = add_command(actions, name, help=help)
        sub.add_argument("--tenant", help="only this tenant's dead letters")
        sub.set_defaults(handler=handler)
        return sub

    listing = command("list", "a consumer's dead letters, newest first", _run_dlq_list)
    listing.add_argument("--consumer", required=True, help="the consumer's name")
    listing.add_argument("--include-resolved", action="store_true", help="list resolved ones too")
    listing.add_argument("--limit", type=int, default=50, help="page size, 1-500 (default 50)")
    listing.add_argument("--before", metavar="CURSOR", help="the next page after this cursor")
    listing.add_argument("--json", action="store_true", help="JSON for machines")

    show = command("show", "one dead letter with its envelope and traceback", _run_dlq_show)
    show.add_argument("dead_letter_id", metavar="ID", help="dlq_<UUIDv7>")
    show.add_argument("--json", action="store_true", help="JSON for machines")

    resolve = command("resolve", "mark a dead letter resolved (one-shot)", _run_dlq_resolve)
    resolve.add_argument("dead_letter_id", metavar="ID", help="dlq_<UUIDv7>")
    resolve.add_argument("--by", required=True, help="who resolves it")
    resolve.add_argument("--note", help="why, for the record")

    replay = command("replay", "have the consumer handle the event again", _run_dlq_replay)
    replay.add_argument("dead_letter_id", metavar="ID", help="dlq_<UUIDv7>")
    replay.add_argument("--by", required=True, help="who asks for the replay")

    replay_all = command(
        "replay-all", "replay every active dead letter of a consumer", _run_dlq_replay_all
    )
    replay_all.add_argument("--consumer", required=True, help="the consumer's name")
    replay_all.add_argument("--by", required=True, help="who asks for the replay")
    replay_all.add_argument("--event-type", help="only dead letters of this event type")


async def _run_dlq_list(args: argparse.Namespace, ctx: Context) -> int:
    async with ctx.pool() as pool:
        page = await DeadLetters(pool, ctx.schema).list(
            args.consumer,
            include_resolved=args.include_resolved,
            limit=args.limit,
            before=args.before,
            tenant_id=args.tenant,
        )
    if args.json:
        ctx.print_json(page.model_dump(mode="json"))
        return EXIT_OK
    if not page.items:
        which = "dead letters" if args.include_resolved else "active dead letters"
        ctx.print(f"no {which} for consumer {args.consumer!r}")
        return EXIT_OK
    rows = [
        [
            d.dead_letter_id,
            _time(d.created_at),
            d.event_type,
            str(d.attempts),
            _state(d),
            _shorten(f"{d.error_type}: {d.error_message}", 60),
        ]
        for d in page.items
    ]
    ctx.print(*_table(["ID", "CREATED (UTC)", "EVENT TYPE", "ATTEMPTS", "STATE", "ERROR"], rows))
    if page.next_cursor:
        ctx.print(f"more: add --before {page.next_cursor}")
    return EXIT_OK


async def _run_dlq_show(args: argparse.Namespace, ctx: Context) -> int:
    async with ctx.pool() as pool:
        dead_letter = await DeadLetters(pool, ctx.schema).get(
            args.dead_letter_id, tenant_id=args.tenant
        )
    if args.json:
        ctx.print_json(dead_letter.model_dump(mode="json"))
        return EXIT_OK
    d = dead_letter
    version = "" if d.schema_version is None else f" v{d.schema_version}"
    fields = [
        ("dead letter", d.dead_letter_id),
        ("consumer", d.consumer),
        ("event", f"{d.event_id} {d.event_type}{version}"),
        ("tenant", d.tenant_id or "-"),
        ("subject", d.subject or "-"),
        ("created", _time(d.created_at)),
        ("attempts", str(d.attempts)),
        ("error", f"{d.error_type}: {d.error_message}"),
        ("state", _state(d)),
    ]
    if d.resolved_at is not None:
        fields.append(("resolved", f"{_time(d.resolved_at)} by {d.resolved_by}"))
        if d.resolution_note:
            fields.append(("note", d.resolution_note))
    if d.replay_requested_at is not None:
        fields.append(("replay asked", f"{_time(d.replay_requested_at)} by {d.replayed_by}"))
    if d.replayed_at is not None:
        fields.append(("replayed", _time(d.replayed_at)))
    if d.replay_error:
        fields.append(("replay error", d.replay_error))
    width = max(len(name) for name, _ in fields)
    ctx.print(*(f"{name.ljust(width)}  {value}" for name, value in fields))
    ctx.print("envelope", _indent(json.dumps(d.envelope, indent=2, ensure_ascii=False)))
    if d.error_traceback:
        ctx.print("traceback", _indent(d.error_traceback.rstrip()))
    return EXIT_OK


async def _run_dlq_resolve(args: argparse.Namespace, ctx: Context) -> int:
    async with ctx.pool() as pool:
        d = await DeadLetters(pool, ctx.schema).resolve(
            args.dead_letter_id, resolved_by=args.by, note=args.note, tenant_id=args.tenant
        )
    ctx.print(f"resolved {d.dead_letter_id} ({d.consumer}, {d.event_type}) by {d.resolved_by}")
    return EXIT_OK


async def _run_dlq_replay(args: argparse.Namespace, ctx: Context) -> int:
    async with ctx.pool() as pool:
        d = await DeadLetters(pool, ctx.schema).replay(
            args.dead_letter_id, replayed_by=args.by, tenant_id=args.tenant
        )
    ctx.print(
        f"replay pending for {d.dead_letter_id} (asked by {d.replayed_by}): consumer "
        f"{d.consumer!r} will handle {d.event_id} ({d.event_type}) again"
    )
    return EXIT_OK


async def _run_dlq_replay_all(args: argparse.Namespace, ctx: Context) -> int:
    which = f" of type {args.event_type}" if args.event_type else ""
    ctx.progress(f"marking active dead letters{which} of {args.consumer!r} for replay ...")
    async with ctx.pool() as pool:
        marked = await DeadLetters(pool, ctx.schema).replay_all(
            args.consumer, replayed_by=args.by, event_type=args.event_type, tenant_id=args.tenant
        )
    ctx.print(f"marked {marked} dead letter(s){which} of consumer {args.consumer!r} for replay")
    return EXIT_OK


# --------------------------------------------------------------------------- formatting


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _state(d: DeadLetter) -> str:
    if d.resolved_at is not None:
        return "resolved"
    if d.replay_status == "pending":
        return "replay pending"
    if d.replay_status == "failed":
        return "replay failed"
    return "active"


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***``, safe to print."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return "<unparsable DSN>"
    if not password:
        return dsn
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    if netloc == parts.netloc:  # written percent-encoded; hide all of the user info
        netloc = "***@" + parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc).geturl()


# --------------------------------------------------------------------------- status


def _configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consumer", help="only this consumer")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--warn-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="warn about transactions open longer than this (default: 60)",
    )
    parser.set_defaults(handler=_run_status)


async def _run_status(args: argparse.Namespace, ctx: Context) -> int:
    from ._status import consumer_status

    async with ctx.pool() as pool:
        report = await consumer_status(
            pool,
            schema=ctx.schema,
            consumer=args.consumer,
            horizon_warning_after=args.warn_after,
        )
    if args.json:
        ctx.print_json(report.model_dump(mode="json"))
        return EXIT_OK
    if not report.consumers:
        ctx.print("no consumers have run against this schema yet")
    else:
        rows = [
            [
                h.consumer,
                h.event_type,
                f"{h.cursor_xid}/{h.cursor_position}",
                str(h.lag),
                "-"
                if h.oldest_pending_age_seconds is None
                else f"{h.oldest_pending_age_seconds:.1f}s",
                str(h.dead_letters),
            ]
            for h in report.consumers
        ]
        headers = ["CONSUMER", "EVENT TYPE", "CURSOR (XID/POS)", "LAG", "OLDEST", "DEAD"]
        ctx.print(*_table(headers, rows))
    if report.horizon_holders:
        ctx.print("", "transactions holding consumers back (oldest first):")
        holders = [
            [
                str(h.pid) if h.pid is not None else f"prepared {h.gid}",
                h.database or "-",
                f"{h.age_seconds:.1f}s",
                h.state or "-",
                _shorten(h.query or "", 60),
            ]
            for h in report.horizon_holders
        ]
        ctx.print(*_table(["PID", "DATABASE", "AGE", "STATE", "QUERY"], holders))
    for warning in report.warnings:
        print(f"warning: {warning}", file=ctx.err)
    return EXIT_OK


# --------------------------------------------------------------------------- worker


def _configure_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="MODULE:ATTRIBUTE",
        help="a Consumer, or a function (pool) -> Consumer, sync or async",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
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


async def _run_worker(args: argparse.Namespace, ctx: Context) -> int:
    import inspect
    import logging

    from ._consumer import Consumer

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=ctx.err,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    target = _load_target(args.target)
    if isinstance(target, Consumer):
        pool = target.pool
        await pool  # initialise a pool made outside a running loop; no-op otherwise
        await target.run()
        return EXIT_OK
    dsn = ctx.require_dsn()
    size = args.pool_size or 18
    try:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=size, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError) as exc:
        raise CommandError(f"cannot reach the database at {redact_dsn(dsn)}: {exc}") from exc
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


# --------------------------------------------------------------------------- demo


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200, help="events to publish (default 200)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the database (and its schema) in place and print the DSN",
    )
    parser.set_defaults(handler=_run_demo)


async def _run_demo(args: argparse.Namespace, ctx: Context) -> int:
    from ._demo import run_demo

    if args.events < 1:
        raise CommandError("--events must be at least 1", EXIT_USAGE)
    # Only an explicit --dsn: the demo never writes into $DATABASE_URL by surprise.
    summary = await run_demo(
        getattr(args, "explicit_dsn", None), events=args.events, keep=args.keep, out=ctx.out
    )
    return EXIT_OK if summary.ok else EXIT_FAILURE


# --------------------------------------------------------------------------- prune

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``3600s``."""
    value, unit = text[:-1], text[-1:].lower()
    if unit not in _DURATION_UNITS or not value.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give a whole number and a unit, e.g. 30d, 12h, 90m"
        )
    return timedelta(seconds=int(value) * _DURATION_UNITS[unit])


def _configure_prune(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="AGE",
        help="delete events older than this that every consumer has passed (e.g. 30d)",
    )
    parser.add_argument("--batch-size", type=int, default=5_000, help="rows per transaction")
    parser.set_defaults(handler=_run_prune)


async def _run_prune(args: argparse.Namespace, ctx: Context) -> int:
    from ._retention import PruneResult, prune

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


# --------------------------------------------------------------------------- main

#: The commands, in the order ``--help`` lists them.
SUBCOMMANDS: dict[str, Subcommand] = {
    "migrate": Subcommand("create or upgrade the dispatcher tables", _configure_migrate),
    "contracts": Subcommand("check event contracts", _configure_contracts),
    "dlq": Subcommand("list, show, resolve and replay dead letters", _configure_dlq),
    "status": Subcommand("consumer lag, dead letters and horizon holders", _configure_status),
    "worker": Subcommand("run a Consumer until SIGTERM", _configure_worker),
    "demo": Subcommand("run the demo scenario on an embedded PostgreSQL", _configure_demo),
    "prune": Subcommand("delete old events every consumer has passed", _configure_prune),
}


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
        return asyncio.run(handler(args, ctx))
    except KeyboardInterrupt:
        return _fail(ctx, "interrupted", 130)
    except CommandError as exc:
        return _fail(ctx, str(exc), exc.exit_code)
    except (UsageError, InvalidIdentifierError) as exc:
        return _fail(ctx, str(exc), EXIT_USAGE)
    except DispatchError as exc:
        return _fail(ctx, str(exc), EXIT_FAILURE)
    except Exception as exc:
        message = f"unexpected {type(exc).__name__}: {exc}"
        if not ctx.debug:
            message += " (run with --debug for the traceback)"
        return _fail(ctx, message, EXIT_FAILURE)


def _fail(ctx: Context, message: str, exit_code: int) -> int:
    if ctx.debug:
        traceback.print_exc(file=ctx.err)
    print(f"error: {' '.join(message.split())}", file=ctx.err)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
