"""The demo's second service, Delivery, as a process of its own.

    DISPATCH_AIO_DEMO_DSN=... DISPATCH_AIO_DEMO_SECRET=whsec_... \\
        python -m dispatch_aio.demo.delivery_service SCHEMA

Migrates its schema, creates its ``lesson_feed`` table, serves its inbox with uvicorn
on 127.0.0.1 (a free port) and runs its own consumer, which writes one row per event
through its connection. Prints ``url <inbox URL>`` once the inbox accepts requests;
SIGTERM drains the consumer, stops the server and exits 0. The DSN and the secret come
from the environment, so that no process listing shows them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import asyncpg

from .._consumer import Consumer
from .._envelope import Event
from .._identifiers import quote_ident
from .._migrate import migrate
from .._pool import open_pool
from .._registry import Registry
from .domain import EVENT_TYPES, FEED_TABLE

__all__ = ["LOCAL_CONSUMER", "serve"]

LOCAL_CONSUMER = "delivery.lessons"
#: What the inbox logs for each refused request: expected here, for the forged ones.
_REFUSED = "inbox refused a request"


async def serve(dsn: str, schema: str, secret: str) -> None:
    """Run Delivery until SIGTERM."""
    from ..inbox import serve_inbox

    registry = Registry.load()
    qschema = quote_ident(schema)
    pool = await open_pool(dsn, min_size=1, max_size=6)
    try:
        await migrate(pool, schema)
        await pool.execute(
            f"CREATE TABLE IF NOT EXISTS {qschema}.{FEED_TABLE} (event_id text PRIMARY KEY, "
            "event_type text NOT NULL, times integer NOT NULL DEFAULT 1)"
        )
        consumer = Consumer(
            pool,
            name=LOCAL_CONSUMER,
            registry=registry,
            db_schema=schema,
            concurrency=4,
            poll_interval=1.0,
            drain_timeout=10.0,
        )

        async def feed(event: Event, conn: asyncpg.Connection) -> None:
            # Exactly once through the connection: a second copy would count times = 2.
            await conn.execute(
                f"INSERT INTO {qschema}.{FEED_TABLE} (event_id, event_type) VALUES ($1, $2) "
                f"ON CONFLICT (event_id) DO UPDATE SET times = {FEED_TABLE}.times + 1",
                event.event_id,
                event.event_type,
            )

        for event_type in EVENT_TYPES:
            consumer.on(event_type)(feed)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with (
            serve_inbox(
                dsn, secrets=[secret], registry=registry, schema=schema, pool_size=8
            ) as inbox,
            consumer,
        ):
            print(f"url {inbox.url}", flush=True)
            await stop.wait()
    finally:
        await pool.close()


def _quiet_expected_refusals() -> None:
    """Show the library's warnings on stderr, except the expected refusals."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lambda record: not record.getMessage().startswith(_REFUSED))
    handler.setFormatter(logging.Formatter("delivery: %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    library = logging.getLogger("dispatch_aio")
    library.addHandler(handler)
    library.propagate = False


if __name__ == "__main__":
    _quiet_expected_refusals()
    asyncio.run(
        serve(
            os.environ["DISPATCH_AIO_DEMO_DSN"], sys.argv[1], os.environ["DISPATCH_AIO_DEMO_SECRET"]
        )
    )
