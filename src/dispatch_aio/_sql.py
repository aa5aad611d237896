"""SQL text: migrations and named queries from the bundled ``sql/`` directory.

Only the storage modules use this. Queries live in ``sql/queries.sql`` as blocks that
start with ``-- name: <query_name>``; they are read once and rendered once per schema.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass

from ._identifiers import quote_ident, validate_schema_name
from ._resources import bundled_sql_dir

__all__ = [
    "Migration",
    "Queries",
    "channel_for",
    "lease_channel_for",
    "lock_class_for",
    "migrations",
    "queries",
    "replay_channel_for",
]

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql\Z")


def lock_class_for(schema: str) -> int:
    """The int4 advisory-lock namespace of a schema (signed, as PostgreSQL wants it)."""
    value = zlib.crc32(f"dispatch_aio:{validate_schema_name(schema)}".encode())
    return value - (1 << 32) if value >= (1 << 31) else value


def channel_for(schema: str) -> str:
    """The NOTIFY channel of a schema's event inserts."""
    validate_schema_name(schema)
    return (
        "dispatcher_event_inserted" if schema == "public" else f"dispatcher_event_inserted_{schema}"
    )


def replay_channel_for(schema: str) -> str:
    """The NOTIFY channel that tells a schema's consumers a dead letter awaits replay."""
    validate_schema_name(schema)
    return (
        "dispatcher_replay_requested"
        if schema == "public"
        else f"dispatcher_replay_requested_{schema}"
    )


def lease_channel_for(schema: str) -> str:
    """The NOTIFY channel that tells a consumer's processes its members or leases changed."""
    validate_schema_name(schema)
    return (
        "dispatcher_lease_changed" if schema == "public" else f"dispatcher_lease_changed_{schema}"
    )


def _render(text: str, schema: str) -> str:
    channel = channel_for(schema).replace("'", "''")
    replay_channel = replay_channel_for(schema).replace("'", "''")
    lease_channel = lease_channel_for(schema).replace("'", "''")
    return (
        text.replace("{{schema}}", quote_ident(schema))
        .replace("{{replay_channel}}", f"'{replay_channel}'")
        .replace("{{lease_channel}}", f"'{lease_channel}'")
        .replace("{{lock_class}}", str(lock_class_for(schema)))
        .replace("{{channel}}", f"'{channel}'")
    )


@dataclass(frozen=True)
class Migration:
    """One ordered migration file."""

    version: int
    name: str
    text: str
    checksum: str

    def render(self, schema: str) -> str:
        """The migration's SQL for ``schema``."""
        return _render(self.text, schema)


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """All bundled migrations, in version order."""
    found: list[Migration] = []
    for path in sorted((bundled_sql_dir() / "migrations").iterdir()):
        match = _MIGRATION_FILE.fullmatch(path.name)
        if match is None:
            continue
        text = path.read_text()
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                text=text,
                checksum=f"{zlib.crc32(text.encode()):08x}",
            )
        )
    return tuple(found)


class Queries:
    """Named queries rendered for one schema: ``queries("public").fetch_events``."""

    def __init__(self, schema: str, blocks: dict[str, str]) -> None:
        self.schema = validate_schema_name(schema)
        self._rendered = {name: _render(text, schema) for name, text in blocks.items()}

    def __getattr__(self, name: str) -> str:
        try:
            return self._rendered[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in sql/queries.sql") from None


@functools.cache
def _blocks() -> dict[str, str]:
    text = (bundled_sql_dir() / "queries.sql").read_text()
    parts = _NAME.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


@functools.cache
def queries(schema: str) -> Queries:
    """The named queries for ``schema`` (rendered once, cached)."""
    return Queries(schema, _blocks())
