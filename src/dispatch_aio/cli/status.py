"""``dispatch-aio status``: consumer lag, dead letters and horizon holders."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING

from .._dsn import redact
from . import arguments
from .context import EXIT_OK, Context
from .formatting import shorten, table, time

if TYPE_CHECKING:
    from .._status import StatusReport

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``status``."""
    parser.add_argument("--consumer", type=arguments.text, help="only this consumer")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--warn-after",
        type=arguments.positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="warn about transactions open longer than this (default: 60)",
    )
    parser.add_argument(
        "--idle-after",
        type=arguments.duration,
        default=timedelta(hours=24),
        metavar="AGE",
        help="mark consumers whose cursors have not moved for this long (default: 24h)",
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the health of every consumer (or one)."""
    from .._status import age, consumer_status

    async with ctx.pool() as pool:
        report = await consumer_status(
            pool,
            schema=ctx.schema,
            consumer=args.consumer,
            horizon_warning_after=args.warn_after,
            idle_after=args.idle_after.total_seconds(),
        )
    # A holder's query text may carry a password (a dblink connection string, ALTER ROLE).
    report = report.model_copy(
        update={
            "horizon_holders": [
                h.model_copy(update={"query": redact(h.query, ctx.dsn)}) if h.query else h
                for h in report.horizon_holders
            ]
        }
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
        ctx.print(*table(headers, rows))
    if report.activity:
        ctx.print("", "last activity (a cursor's latest move):")
        activity = [
            [a.consumer, time(a.last_activity_at), age(a.idle_seconds), "idle" if a.idle else ""]
            for a in report.activity
        ]
        ctx.print(*table(["CONSUMER", "LAST ACTIVITY (UTC)", "AGO", ""], activity))
    if report.horizon_holders:
        ctx.print("", "transactions holding consumers back (oldest first):")
        holders = [
            [
                str(h.pid) if h.pid is not None else f"prepared {h.gid}",
                h.database or "-",
                f"{h.age_seconds:.1f}s",
                h.state or "-",
                shorten(h.query or "", 60),
            ]
            for h in report.horizon_holders
        ]
        ctx.print(*table(["PID", "DATABASE", "AGE", "STATE", "QUERY"], holders))
    _print_groups(report, ctx)
    for warning in report.warnings:
        print(f"warning: {warning}", file=ctx.err)
    return EXIT_OK


def _print_groups(report: StatusReport, ctx: Context) -> None:
    """Per consumer run by group members: its processes, what each holds, unowned ones."""
    for group in report.groups:
        ctx.print("", f"processes of {group.consumer}:")
        rows = [
            [
                m.host,
                str(m.pid),
                m.since.strftime("%Y-%m-%d %H:%M:%S"),
                str(len(m.partitions)),
                _ranges(m.partitions),
                str(m.lag),
                str(m.backlog),
            ]
            for m in group.members
        ]
        headers = ["HOST", "PID", "SINCE", "PARTITIONS", "WHICH", "LAG", "BACKLOG"]
        ctx.print(*table(headers, rows))
        if group.unowned:
            ctx.print(
                f"unowned partitions ({len(group.unowned)}, lag {group.unowned_lag}): "
                + _ranges(group.unowned)
            )


def _ranges(parts: list[int]) -> str:
    """``0-63,128-191``: sorted partitions as runs."""
    runs: list[str] = []
    for p in sorted(parts):
        if runs and runs[-1].split("-")[-1] == str(p - 1):
            runs[-1] = f"{runs[-1].split('-')[0]}-{p}"
        else:
            runs.append(str(p))
    return shorten(",".join(runs), 60) if runs else "-"
