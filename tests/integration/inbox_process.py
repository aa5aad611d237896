"""An inbox served by uvicorn, run as a subprocess by the delivery tests and benchmark.

    python inbox_process.py DSN --secret WHSEC [--port N]

Binds 127.0.0.1 (port 0: a free one), prints ``port <N>`` once it accepts connections,
and serves until killed or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from dispatch_aio.inbox import serve_inbox


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--secret", action="append", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with serve_inbox(args.dsn, secrets=args.secret, port=args.port) as service:
        print(f"port {service.port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
