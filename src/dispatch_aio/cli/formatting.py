"""Plain-text rendering for people: times, states, tables. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._deadletters import DeadLetter

__all__ = ["indent", "shorten", "state", "table", "time"]


def time(value: datetime) -> str:
    """``value`` in UTC, to the second."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def state(d: DeadLetter) -> str:
    """A dead letter's state in one or two words: replayed and resolved told apart."""
    return d.state.replace("_", " ")


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def indent(text: str) -> str:
    """``text`` indented by two spaces."""
    return "\n".join("  " + line for line in text.splitlines())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), *(line(r) for r in rows)]
