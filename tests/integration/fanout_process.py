"""A fan-out worker run as a subprocess by the crash tests.

    python fanout_process.py DSN CONFIG.json

Prints ``ready`` once every endpoint consumer runs; on SIGTERM drains and exits 0.
Retries are short (the tests kill and restart it, they do not wait for backoff).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncpg

from dispatch_aio import FanoutConfig
from dispatch_aio.fanout import Fanout


async def main(dsn: str, config_path: str) -> None:
    config = FanoutConfig.load(config_path)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=20)
    try:
        fanout = Fanout(
            pool,
            config,
            consumer_options={"poll_interval": 0.5, "retry_jitter": 0.0, "drain_timeout": 5.0},
        )
        loop = asyncio.get_running_loop()
        async with fanout:
            loop.add_signal_handler(signal.SIGTERM, fanout.stop)
            print("ready", flush=True)
            await fanout.wait()
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
