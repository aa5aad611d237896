"""Progress lines, captured library logs and number formatting for the demo."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

# -- output --------------------------------------------------------------------------


class _Progress:
    """Phase lines, and a live status line (redrawn on a terminal, else printed each second)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        isatty = getattr(out, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.started = time.monotonic()
        self._live = False
        self._last_plain = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, text: str = "") -> None:
        """Print a permanent line (clearing the live line first on a terminal)."""
        if self._live:
            self.out.write("\r\x1b[K")
            self._live = False
        self.out.write(text + "\n")
        self.out.flush()

    def status(self, text: str, *, force: bool = False) -> None:
        """Show the live status line."""
        stamped = f"  [{self.elapsed():5.1f}s] {text}"
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            if len(stamped) > width > 10:
                stamped = stamped[: width - 3] + "..."
            self.out.write("\r\x1b[K" + stamped)
            self.out.flush()
            self._live = True
        elif force or time.monotonic() - self._last_plain >= 1.0:
            self._last_plain = time.monotonic()
            self.line(stamped)

    def end_live(self) -> None:
        """Leave the last live line on screen."""
        if self._live:
            self.out.write("\n")
            self.out.flush()
            self._live = False


@contextlib.contextmanager
def _captured_library_logs() -> Iterator[list[logging.LogRecord]]:
    """Keep the library's warnings off the screen unless the application set up logging.

    The demo's failing handler makes the consumer log a warning per retry and an error
    per dead letter; they are expected, and counted in the summary instead.
    """
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("dispatch_aio")
    if logger.hasHandlers():
        yield records
        return

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return round(ordered[rank - 1], 2)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
