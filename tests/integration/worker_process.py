"""A consumer worker run as a subprocess by the crash and multi-process tests.

    python worker_process.py DSN --name NAME [--max-sleep-ms N] [--concurrency N]

The handler of ``credit.locked`` inserts ``event_id`` into the ``effects`` table through
the event's connection (so the row commits if and only if the event is marked handled),
after sleeping up to ``--max-sleep-ms`` so that kills land inside open transactions.
Prints ``ready`` once running; on SIGTERM drains, prints its stats as JSON and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import signal
import sys

import asyncpg

from dispatch_aio import Consumer, Event


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--name", default="effects")
    parser.add_argument("--max-sleep-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--lease-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)

    pool = await asyncpg.create_pool(args.dsn, min_size=1, max_size=args.concurrency + 2)
    try:
        consumer = Consumer(
            pool,
            name=args.name,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            max_group=8,
            poll_interval=0.5,
            retry_delays=(0.05, 0.1),
            drain_timeout=5.0,
            lease_timeout=args.lease_timeout,
        )
        max_sleep = args.max_sleep_ms / 1000.0

        @consumer.on("credit.locked")
        async def record(event: Event, conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO effects (event_id) VALUES ($1)", event.event_id)
            if max_sleep:
                await asyncio.sleep(random.uniform(0, max_sleep))

        loop = asyncio.get_running_loop()
        async with consumer:
            loop.add_signal_handler(signal.SIGTERM, consumer.stop)
            print("ready", flush=True)
            await consumer.wait()
        print(json.dumps(dataclasses.asdict(consumer.stats)), flush=True)
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
