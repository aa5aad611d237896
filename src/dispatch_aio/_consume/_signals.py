"""SIGTERM/SIGINT for a worker process: the first drains, a second aborts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

__all__ = ["drain_on_signals"]


@contextlib.contextmanager
def drain_on_signals(drain: Callable[[], None], abort: Callable[[], None]) -> Iterator[None]:
    """Call ``drain`` on the first SIGTERM or SIGINT, ``abort`` on any later one.

    The handlers live on the running loop while the block runs and are removed after it.
    """
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    received = False

    def on_signal() -> None:
        nonlocal received
        if received:
            abort()
        else:
            received = True
            drain()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
