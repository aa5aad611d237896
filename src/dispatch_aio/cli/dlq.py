"""``dispatch-aio dlq list|show|resolve|replay|replay-all``: operate dead letters."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from . import arguments
from .context import EXIT_OK, Context, Handler
from .formatting import indent, shorten, state, table, time
from .parser import add_command

if TYPE_CHECKING:
    import asyncpg

    from .._deadletters import DeadLetters

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Actions of ``dlq``; every argument is checked before connecting."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def command(name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        sub = add_command(actions, name, help=help)
        sub.add_argument("--tenant", type=arguments.text, help="only this tenant's dead letters")
        sub.set_defaults(handler=handler)
        return sub

    def dead_letter_id(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "dead_letter_id", metavar="ID", type=arguments.dead_letter_id, help="dlq_<UUIDv7>"
        )

    listing = command("list", "dead letters, newest first", run_list)
    listing.add_argument(
        "--consumer", type=arguments.text, help="only this consumer's (default: every consumer's)"
    )
    listing.add_argument(
        "--include-resolved",
        action="store_true",
        help="list closed ones too: replayed (by their consumer) or resolved (by hand)",
    )
    listing.add_argument(
        "--limit", type=arguments.page_size, default=50, help="page size, 1-500 (default 50)"
    )
    listing.add_argument(
        "--before",
        metavar="CURSOR",
        type=arguments.cursor,
        help="the next page after this cursor",
    )
    listing.add_argument("--json", action="store_true", help="JSON for machines")

    show = command("show", "one dead letter with its envelope and traceback", run_show)
    dead_letter_id(show)
    show.add_argument("--json", action="store_true", help="JSON for machines")

    resolve = command("resolve", "mark a dead letter resolved (one-shot)", run_resolve)
    dead_letter_id(resolve)
    resolve.add_argument("--by", required=True, type=arguments.text, help="who resolves it")
    resolve.add_argument("--note", help="why, for the record")

    replay = command("replay", "have the consumer handle the event again", run_replay)
    dead_letter_id(replay)
    replay.add_argument("--by", required=True, type=arguments.text, help="who asks for the replay")

    replay_all = command("replay-all", "replay every active dead letter of a consumer", run_all)
    replay_all.add_argument(
        "--consumer", required=True, type=arguments.text, help="the consumer's name"
    )
    replay_all.add_argument(
        "--by", required=True, type=arguments.text, help="who asks for the replay"
    )
    replay_all.add_argument(
        "--event-type", type=arguments.text, help="only dead letters of this event type"
    )


async def run_list(args: argparse.Namespace, ctx: Context) -> int:
    """A page of a consumer's dead letters."""
    async with ctx.pool() as pool:
        page = await _dead_letters(pool, ctx).list(
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
        whose = "any consumer" if args.consumer is None else f"consumer {args.consumer!r}"
        ctx.print(f"no {which} for {whose}")
        return EXIT_OK
    every = args.consumer is None  # then each row says whose it is
    rows = [
        [
            d.dead_letter_id,
            *([d.consumer] if every else []),
            time(d.created_at),
            d.event_type,
            str(d.attempts),
            state(d),
            shorten(f"{d.error_type}: {d.error_message}", 60),
        ]
        for d in page.items
    ]
    headers = ["ID", *(["CONSUMER"] if every else []), "CREATED (UTC)", "EVENT TYPE"]
    ctx.print(*table([*headers, "ATTEMPTS", "STATE", "ERROR"], rows))
    if page.next_cursor:
        ctx.print(f"more: add --before {page.next_cursor}")
    return EXIT_OK


async def run_show(args: argparse.Namespace, ctx: Context) -> int:
    """One dead letter, envelope and traceback."""
    async with ctx.pool() as pool:
        dead_letter = await _dead_letters(pool, ctx).get(args.dead_letter_id, tenant_id=args.tenant)
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
        ("created", time(d.created_at)),
        ("attempts", str(d.attempts)),
        ("error", f"{d.error_type}: {d.error_message}"),
        ("state", state(d)),
    ]
    if d.resolved_at is not None:
        fields.append(("resolved", f"{time(d.resolved_at)} by {d.resolved_by}"))
        if d.resolution_note:
            fields.append(("note", d.resolution_note))
    if d.replay_requested_at is not None:
        fields.append(("replay asked", f"{time(d.replay_requested_at)} by {d.replayed_by}"))
    if d.replayed_at is not None:
        fields.append(("replayed", time(d.replayed_at)))
    if d.replay_error:
        fields.append(("replay error", d.replay_error))
    width = max(len(name) for name, _ in fields)
    ctx.print(*(f"{name.ljust(width)}  {value}" for name, value in fields))
    ctx.print("envelope", indent(json.dumps(d.envelope, indent=2, ensure_ascii=False)))
    if d.error_traceback:
        ctx.print("traceback", indent(d.error_traceback.rstrip()))
    return EXIT_OK


async def run_resolve(args: argparse.Namespace, ctx: Context) -> int:
    """Mark one dead letter resolved."""
    async with ctx.pool() as pool:
        d = await _dead_letters(pool, ctx).resolve(
            args.dead_letter_id, resolved_by=args.by, note=args.note, tenant_id=args.tenant
        )
    ctx.print(f"resolved {d.dead_letter_id} ({d.consumer}, {d.event_type}) by {d.resolved_by}")
    return EXIT_OK


async def run_replay(args: argparse.Namespace, ctx: Context) -> int:
    """Ask the consumer to handle one dead letter's event again."""
    async with ctx.pool() as pool:
        d = await _dead_letters(pool, ctx).replay(
            args.dead_letter_id, replayed_by=args.by, tenant_id=args.tenant
        )
    ctx.print(
        f"replay pending for {d.dead_letter_id} (asked by {d.replayed_by}): consumer "
        f"{d.consumer!r} will handle {d.event_id} ({d.event_type}) again"
    )
    return EXIT_OK


async def run_all(args: argparse.Namespace, ctx: Context) -> int:
    """Mark every active dead letter of a consumer for replay."""
    which = f" of type {args.event_type}" if args.event_type else ""
    ctx.progress(f"marking active dead letters{which} of {args.consumer!r} for replay ...")
    async with ctx.pool() as pool:
        marked = await _dead_letters(pool, ctx).replay_all(
            args.consumer, replayed_by=args.by, event_type=args.event_type, tenant_id=args.tenant
        )
    ctx.print(f"marked {marked} dead letter(s){which} of consumer {args.consumer!r} for replay")
    return EXIT_OK


def _dead_letters(pool: asyncpg.Pool, ctx: Context) -> DeadLetters:
    # Imported when a command runs: building the parser (--help) needs no pydantic models.
    from .._deadletters import DeadLetters

    return DeadLetters(pool, ctx.schema)
