"""Pure checks on an operator request's JSON, before and after it is parsed.

No I/O and no web framework: the HTTP router calls these, and unit tests run them alone.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ECHO_LIMIT", "capped_error", "encodable", "nesting_depth"]

#: How much of a refused input a 422 answer quotes.
ECHO_LIMIT = 120


def nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of JSON ``text`` (strings skipped), without parsing.

    Run before ``json.loads``, so that a body nested thousands deep is refused without
    the parser's recursion. Malformed text still gets a depth; the parser judges it.
    """
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def capped_error(error: Any, limit: int = ECHO_LIMIT) -> Any:
    """One 422 error entry, quoting at most ``limit`` characters of the refused input."""
    if not isinstance(error, dict):
        return error
    capped = dict(error)
    for key in ("input", "ctx"):
        if key in capped:
            text = json.dumps(capped[key], ensure_ascii=False, default=str)
            if len(text) > limit:
                capped[key] = text[:limit] + f"... ({len(text)} characters)"
    return capped


def encodable(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (lone surrogates become ``?``)."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [encodable(item) for item in value]
    if isinstance(value, dict):
        return {encodable(k): encodable(v) for k, v in value.items()}
    return value
