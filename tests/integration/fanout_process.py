"""A fan-out worker run as a subprocess by the crash tests: ``run_fanout`` as a CLI runs it.

    python fanout_process.py DSN CONFIG.json [LEASE_TIMEOUT]

Runs until SIGTERM (drains, exits 0) or SIGKILL. The consumers' ``lease_timeout`` is
settable: a worker started after a kill -9 takes the dead one's partitions over only once
their lease has run out (10 s by default).
"""

from __future__ import annotations

import asyncio
import sys

from dispatch_aio import FanoutConfig
from dispatch_aio.fanout import run_fanout

if __name__ == "__main__":
    lease = {"lease_timeout": float(sys.argv[3])} if len(sys.argv) > 3 else {}
    asyncio.run(run_fanout(sys.argv[1], FanoutConfig.load(sys.argv[2]), consumer_options=lease))
