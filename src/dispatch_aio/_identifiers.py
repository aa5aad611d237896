"""Validation and quoting of SQL identifiers such as the schema name."""

from __future__ import annotations

import re

from ._errors import InvalidIdentifierError

__all__ = ["quote_ident", "validate_schema_name"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: longer names are silently truncated


def validate_schema_name(name: str) -> str:
    """Return ``name`` if it is a safe schema identifier, else raise InvalidIdentifierError.

    Only letters, digits and underscores, not starting with a digit, at most 63 bytes:
    PostgreSQL would truncate a longer name and two schemas could then collide.
    """
    if not isinstance(name, str) or not name:
        raise InvalidIdentifierError("schema name must be a non-empty string")
    # The pattern first: it is ASCII-only, so the length check below cannot meet a lone
    # surrogate that str.encode would refuse.
    if not _IDENT.fullmatch(name):
        raise InvalidIdentifierError(
            f"schema name {name[:80]!r} may only contain letters, digits and underscores "
            "and must not start with a digit"
        )
    if len(name) > _MAX_BYTES:
        raise InvalidIdentifierError(
            f"schema name {name[:80]!r} is longer than {_MAX_BYTES} bytes; "
            "PostgreSQL would truncate it"
        )
    return name


def quote_ident(name: str) -> str:
    """Quote a validated identifier for SQL text (``"name"``)."""
    return '"' + validate_schema_name(name).replace('"', '""') + '"'
