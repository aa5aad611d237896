"""A fan-out worker run as a subprocess by the crash tests: ``run_fanout`` as a CLI runs it.

    python fanout_process.py DSN CONFIG.json

Runs until SIGTERM (drains, exits 0) or SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys

from dispatch_aio import FanoutConfig
from dispatch_aio.fanout import run_fanout

if __name__ == "__main__":
    asyncio.run(run_fanout(sys.argv[1], FanoutConfig.load(sys.argv[2])))
