"""``dispatch-aio contracts init|new|check``: make, extend and check a contracts directory.

``init DIR`` writes an envelope schema and an empty registry (``--id-profile uuid7``,
the bundled envelope's prefixed ids, or ``plain`` non-empty strings); ``new TYPE --dir
DIR --producer P`` adds a payload schema (a skeleton, or generated from ``--model
module:Class``) and its registry entry; ``check [DIR]`` loads a directory and lists
every problem, and with ``--models MODULE`` also every place where that module's
payload models and the registered schemas disagree, each with its field's JSON path.
Exit 1 when there is any problem or mismatch.

The registry, the scaffold and pydantic are imported by the handlers that use them:
building the parser (``dispatch-aio --help``) imports none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from .._contracts.profiles import ID_PROFILES
from .._errors import RegistryError
from . import arguments
from .context import EXIT_OK, EXIT_USAGE, CommandError, Context
from .parser import add_command
from .worker import import_module, load_target

__all__ = ["configure"]

_ENV = "DISPATCH_AIO_CONTRACTS"


def configure(parser: argparse.ArgumentParser) -> None:
    """Actions of ``contracts``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    init = add_command(actions, "init", help="create a contracts directory: envelope, registry")
    init.add_argument("directory", metavar="DIR", type=Path, help="the directory to create")
    init.add_argument(
        "--id-profile",
        choices=list(ID_PROFILES),
        default="uuid7",
        help="subject, tenant and actor formats: uuid7 (prefixed UUIDv7 ids, the default) "
        "or plain (any non-empty string)",
    )
    init.set_defaults(handler=run_init)

    new = add_command(actions, "new", help="add an event type: payload schema and registry entry")
    new.add_argument("event_type", metavar="TYPE", help="dotted lower-case, e.g. order.placed")
    new.add_argument(
        "--dir",
        dest="directory",
        type=Path,
        default=os.environ.get(_ENV),
        required=os.environ.get(_ENV) is None,
        help=f"the contracts directory (default: ${_ENV})",
    )
    new.add_argument(
        "--producer", required=True, type=arguments.text, help="the service publishing it"
    )
    new.add_argument(
        "--version", type=arguments.int_between(1, 10_000), default=1, help="default 1"
    )
    new.add_argument(
        "--model",
        metavar="MODULE:CLASS",
        help="generate the payload schema from this pydantic model (default: a skeleton)",
    )
    new.add_argument(
        "--subscriber",
        action="append",
        default=[],
        dest="subscribers",
        help="a consumer expected to read it (repeatable)",
    )
    new.add_argument("--contract", help="the folder it goes in (default: the first segment)")
    new.set_defaults(handler=run_new)

    check = add_command(actions, "check", help="load a contracts directory and list its problems")
    check.add_argument(
        "path",
        nargs="?",
        help=f"contracts directory (default: ${_ENV}, else the bundled copy)",
    )
    check.add_argument(
        "--models",
        metavar="MODULE",
        help="also compare this module's payload models (PAYLOAD_MODELS, or classes named "
        "like OrderPlaced) with the registered schemas",
    )
    check.set_defaults(handler=run_check)


async def run_init(args: argparse.Namespace, ctx: Context) -> int:
    """Create the directory's envelope and empty registry."""
    from .._contracts.scaffold import init_contracts

    root = await asyncio.to_thread(init_contracts, args.directory, id_profile=args.id_profile)
    ctx.print(
        f"created {root / 'event-types-registry.json'} and the envelope schema "
        f"({args.id_profile} ids); add an event type with: dispatch-aio contracts new "
        f"TYPE --dir {root} --producer NAME"
    )
    return EXIT_OK


async def run_new(args: argparse.Namespace, ctx: Context) -> int:
    """Add one event type (or version) to a contracts directory."""
    from pydantic import BaseModel

    from .._contracts.scaffold import add_event_type

    model = None
    if args.model is not None:
        model = load_target(args.model)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise CommandError(f"{args.model} is not a pydantic model class", EXIT_USAGE)
    path = await asyncio.to_thread(
        add_event_type,
        args.directory,
        args.event_type,
        producer=args.producer,
        version=args.version,
        contract=args.contract,
        subscribers=args.subscribers,
        model=model,
    )
    what = f"generated from {args.model}" if model is not None else "a skeleton: list its fields"
    ctx.print(f"added {args.event_type} v{args.version}: {path} ({what})")
    return EXIT_OK


async def run_check(args: argparse.Namespace, ctx: Context) -> int:
    """Load and compile every contract; print each problem (and each model mismatch)."""
    # Loading reads and compiles every schema file: blocking work, off the event loop.
    return await asyncio.to_thread(_check_contracts, args, ctx)


def _check_contracts(args: argparse.Namespace, ctx: Context) -> int:
    from .._contracts.models import payload_models_in
    from .._registry import Registry

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
    if args.models is None:
        return EXIT_OK
    module = import_module(args.models)
    models = payload_models_in(module, event_types)
    if not models:
        raise CommandError(
            f"no payload models found in {args.models}: name each class after its event "
            "type (order.placed -> OrderPlaced) or list them in PAYLOAD_MODELS"
        )
    mismatches = registry.compare_models(models)
    for event_type, found in mismatches.items():
        for mismatch in found:
            ctx.print(f"{event_type} ({models[event_type].__name__}): {mismatch}")
    total = sum(len(found) for found in mismatches.values())
    if total:
        raise CommandError(
            f"{total} mismatch(es) between the models of {args.models} and the registry"
        )
    ctx.print(f"ok: {len(models)} models agree with their schemas ({', '.join(sorted(models))})")
    return EXIT_OK
