"""Argument types checked while parsing, before anything touches the database.

Each raises ``argparse.ArgumentTypeError`` (exit 2, one line) for a value the command
could only fail on later: a malformed id or cursor, a page size out of range, a
duration no clock can hold. Pure. The dead-letter rules come from ``_deadletters``,
imported when a value is checked: building the parser imports no pydantic model.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import timedelta

from .._errors import UsageError
from .._ids import is_prefixed_id

__all__ = [
    "cursor",
    "dead_letter_id",
    "duration",
    "int_between",
    "page_size",
    "positive_seconds",
    "text",
]

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: The longest ``--older-than``: a century; beyond it no event can be that old.
MAX_DURATION = timedelta(days=36_525)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:60] + "...")


def duration(value: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``3600s``, at most a century."""
    amount, unit = value[:-1], value[-1:].lower()
    if unit not in _DURATION_UNITS or not (amount.isascii() and amount.isdigit()):
        raise argparse.ArgumentTypeError(
            f"{_shown(value)} is not a duration: give a whole number and a unit, e.g. 30d, 12h, 90m"
        )
    # Compare as integers first: timedelta itself overflows on huge amounts.
    if len(amount) > 12 or int(amount) * _DURATION_UNITS[unit] > MAX_DURATION.total_seconds():
        raise argparse.ArgumentTypeError(
            f"{_shown(value)} is longer than {MAX_DURATION.days} days; give a shorter age"
        )
    return timedelta(seconds=int(amount) * _DURATION_UNITS[unit])


def dead_letter_id(value: str) -> str:
    """A ``dlq_<UUIDv7>`` id, exactly (no blanks, no trailing newline)."""
    if not is_prefixed_id(value, "dlq"):
        raise argparse.ArgumentTypeError(
            f"{_shown(value)} is not a dead-letter id: expected dlq_ followed by a "
            "lower-case UUIDv7"
        )
    return value


def cursor(value: str) -> str:
    """A ``next_cursor`` printed by a previous ``dlq list``."""
    from .._deadletters import decode_cursor

    try:
        decode_cursor(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(value)} is not a whole number") from None
        if number < low or (high is not None and number > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {number}")
        return number

    return parse


def page_size(value: str) -> int:
    """A page size of ``dlq list``: 1 to the dead letters' ``MAX_PAGE_SIZE``."""
    from .._deadletters import MAX_PAGE_SIZE

    return int_between(1, MAX_PAGE_SIZE)(value)


def positive_seconds(value: str) -> float:
    """A finite number of seconds above zero."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_shown(value)} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {value}")
    return number


def text(value: str) -> str:
    """A non-empty string PostgreSQL can store as text (no NUL, no lone surrogate)."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    from .._deadletters import text_problem

    problem = text_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value
