"""The ``dispatch-aio`` command line.

::

    dispatch-aio [--dsn DSN] [--schema NAME] [--debug] COMMAND ...

    migrate [--no-notify]                 create or upgrade the dispatcher tables
    contracts init DIR [--id-profile P]   a contracts directory: envelope, empty registry
    contracts new TYPE --dir DIR --producer P [--model M:C]   add an event type
    contracts check [DIR] [--models MOD]  list every problem (and model mismatch)
    dlq list [--consumer C] [...]         dead letters, newest first (every consumer's by default)
    dlq show ID                           one dead letter, envelope and traceback
    dlq resolve ID --by WHO [--note T]    mark it resolved (one-shot)
    dlq replay ID --by WHO                have its consumer handle the event again
    dlq replay-all --consumer C --by WHO  the same for every active dead letter
    status [--consumer C] [--json]        lag, dead letters, last activity, horizon holders
    worker MODULE:ATTRIBUTE [...]         run a Consumer until SIGTERM
    fanout CONFIG                         deliver events to other services until SIGTERM
    demo [--events N] [--keep]            the demo scenario
    prune --older-than AGE                delete old events every consumer has passed

``--dsn`` defaults to ``$DATABASE_URL``; the global options may also follow the command.
Exit codes: 0 success, 1 failure, 2 usage error (bad arguments, a malformed id or DSN).
Arguments are checked while parsing, before anything touches the database. An error is
one line on stderr (``error: ...``); ``--debug`` adds the traceback. No output ever
shows a database password, in whatever form the DSN carries it.

Works with the base install: nothing here imports the FastAPI integration.

One module per command (``migrate``, ``contracts``, ``dlq``, ``status``, ``worker``,
``fanout``, ``demo``, ``prune``), each with a ``configure(parser)`` that fills in its
parser and sets ``handler`` on every leaf parser (``parser.set_defaults(handler=...)``).
A handler is ``async def handler(args, ctx: Context) -> int`` and returns the exit code;
:meth:`Context.pool` gives it a connected pool with readable, redacted connection
errors. Add a command to :data:`~dispatch_aio.cli.app.SUBCOMMANDS`.
"""

from __future__ import annotations

from .app import SUBCOMMANDS, build_parser, main
from .context import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError, Context, Handler
from .parser import Subcommand, add_command

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
