"""A fan-out worker run as a subprocess by the crash tests: what ``run_fanout`` runs.

    python fanout_process.py DSN CONFIG.json [LEASE_TIMEOUT]

Runs until SIGTERM (drains, exits 0) or SIGKILL. ``run_fanout``'s body, with the
consumers' ``lease_timeout`` settable: a worker started after a kill -9 takes the dead
one's partitions over only once their lease has run out (10 s by default).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from dispatch_aio import FanoutConfig
from dispatch_aio._pool import open_pool
from dispatch_aio.fanout import Fanout


async def main(dsn: str, config: FanoutConfig, options: dict[str, Any]) -> None:
    size = sum(endpoint.concurrency + 2 for endpoint in config.endpoints.values())
    pool = await open_pool(dsn, min_size=1, max_size=size)
    try:
        await Fanout(pool, config, consumer_options=options).run()
    finally:
        await pool.close()


if __name__ == "__main__":
    lease = {"lease_timeout": float(sys.argv[3])} if len(sys.argv) > 3 else {}
    asyncio.run(main(sys.argv[1], FanoutConfig.load(sys.argv[2]), lease))
