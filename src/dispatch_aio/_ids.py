"""Prefixed UUIDv7 identifiers (``evt_0190...``): time-ordered, so indexes stay compact."""

from __future__ import annotations

import re

import uuid_utils

__all__ = ["ID_PATTERN", "is_prefixed_id", "new_id"]

#: Lower-case UUIDv7 as written after a prefix: version nibble 7, RFC 4122 variant.
UUID7 = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
ID_PATTERN = re.compile(rf"^(?P<prefix>[a-z]{{2,8}})_(?P<uuid>{UUID7})\Z")


def new_id(prefix: str) -> str:
    """Return ``<prefix>_<UUIDv7>``; ``prefix`` is a short lower-case tag such as ``evt``."""
    return f"{prefix}_{uuid_utils.uuid7()}"


def is_prefixed_id(value: str, prefix: str) -> bool:
    """True when ``value`` is ``<prefix>_<UUIDv7>``."""
    match = ID_PATTERN.match(value) if isinstance(value, str) else None
    return match is not None and match.group("prefix") == prefix
