"""SQL text: migrations and named queries from the bundled ``sql/`` directory.

Only the storage modules use this. Queries live in ``sql/queries.sql`` as blocks that
start with ``-- name: <query_name>``; they are read once and rendered once per schema.

A text several queries share (a read's column list, an event's partition) is written
once, as a block that starts with ``-- fragment: <name>(<parameters>)``, and used as
``{{<name>(<arguments>)}}``. A parameter is a table alias (``e``: the fragment's ``e.``
qualifiers take the argument's alias) or a statement parameter (``$consumer``: replaced
by the argument, ``$9``). Fragments may use fragments; they are expanded when the file
is read, so a query's text is whole before any schema is rendered into it. A fragment
holds no comment (expanded inside a line, it would hide the rest of the line): what it
needs said goes above it, in the comment lines that follow its header.
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
    "SqlFileError",
    "channel_for",
    "lease_channel_for",
    "lock_class_for",
    "migrations",
    "parse_blocks",
    "queries",
    "replay_channel_for",
]

# A header line may end in "\r": a checkout with Windows line endings reads the same.
_HEADER = re.compile(
    r"^-- (name|fragment): ([a-z_][a-z0-9_]*)(?:\(([^()]*)\))?[ \t\r]*$", re.MULTILINE
)
_CALL = re.compile(r"\{\{([a-z_][a-z0-9_]*)\(([^(){}]*)\)\}\}")
_ALIAS = re.compile(r"[a-z_][a-z0-9_]*\Z")
_PARAMETER = re.compile(r"\$[a-z_][a-z0-9_]*\Z")
_ARGUMENT = re.compile(r"(?:[a-z_][a-z0-9_]*|\$[0-9]+|\$[a-z_][a-z0-9_]*)\Z")
_MAX_DEPTH = 8
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql\Z")


class SqlFileError(ValueError):
    """``sql/queries.sql`` does not read as named queries and fragments (a packaging or
    editing mistake: the message names the block)."""


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


@dataclass(frozen=True)
class _Fragment:
    params: tuple[str, ...]
    body: str


def parse_blocks(text: str) -> dict[str, str]:
    """The named queries of a queries file's ``text``, their fragments expanded.

    Raises :class:`SqlFileError` for a name given twice, a fragment that is not defined,
    takes other arguments, holds a comment, uses itself or is used nowhere.
    """
    headers = list(_HEADER.finditer(text))
    queries: dict[str, str] = {}
    fragments: dict[str, _Fragment] = {}
    for index, header in enumerate(headers):
        kind, name, params = header.groups()
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        body = text[header.end() : end]
        if name in queries or name in fragments:
            raise SqlFileError(f"{name!r} is defined twice")
        if kind == "name":
            if params is not None:
                raise SqlFileError(f"query {name!r} takes no parameters")
            queries[name] = body.strip()
            continue
        fragments[name] = _fragment(name, params or "", body)
    used: set[str] = set()
    expanded = {name: _expand(body, fragments, name, 0, used) for name, body in queries.items()}
    unused = sorted(set(fragments) - used)
    if unused:
        raise SqlFileError(f"fragments used by no query: {', '.join(unused)}")
    return expanded


def _fragment(name: str, params: str, body: str) -> _Fragment:
    names = tuple(p.strip() for p in params.split(",") if p.strip())
    for param in names:
        if not (_ALIAS.match(param) or _PARAMETER.match(param)):
            raise SqlFileError(f"fragment {name!r}: {param!r} is not an alias or a $name")
    # The comment lines under the header say what the fragment is; they are not its text.
    lines = body.strip().splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    text = "\n".join(lines).strip()
    if not text:
        raise SqlFileError(f"fragment {name!r} is empty")
    if "--" in text:
        raise SqlFileError(f"fragment {name!r} holds a comment: put it above its text")
    return _Fragment(names, text)


def _expand(
    text: str, fragments: dict[str, _Fragment], where: str, depth: int, used: set[str]
) -> str:
    """``text`` with every fragment call replaced by the fragment's text; a fragment's
    lines after its first are indented to the column its call began at."""
    if depth > _MAX_DEPTH:
        raise SqlFileError(f"{where!r}: fragments nested deeper than {_MAX_DEPTH} (a loop?)")

    def call(match: re.Match[str]) -> str:
        name = match.group(1)
        fragment = fragments.get(name)
        if fragment is None:
            raise SqlFileError(f"{where!r} uses {name!r}, which is not a fragment")
        args = tuple(a.strip() for a in match.group(2).split(",") if a.strip())
        if len(args) != len(fragment.params) or not all(_ARGUMENT.match(a) for a in args):
            raise SqlFileError(
                f"{where!r} gives {name!r} ({', '.join(args)}); it takes "
                f"({', '.join(fragment.params)})"
            )
        body = _bind(fragment, dict(zip(fragment.params, args, strict=True)))
        used.add(name)
        body = _expand(body, fragments, name, depth + 1, used)
        column = match.start() - (text.rfind("\n", 0, match.start()) + 1)
        return body.replace("\n", "\n" + " " * column)

    return _CALL.sub(call, text)


def _bind(fragment: _Fragment, bound: dict[str, str]) -> str:
    """The fragment's text with its parameters replaced (in the calls it makes too)."""

    def nested(match: re.Match[str]) -> str:
        args = (a.strip() for a in match.group(2).split(","))
        given = ", ".join(bound.get(a, a) for a in args if a)
        return "{{" + match.group(1) + "(" + given + ")}}"

    body = _CALL.sub(nested, fragment.body)
    # One pass for all of them: an argument that names another parameter (f(x, e) for
    # f(e, x)) must not be replaced again.
    aliases = [re.escape(p) for p in bound if not p.startswith("$")]
    params = [re.escape(p[1:]) for p in bound if p.startswith("$")]
    patterns = []
    if aliases:
        # A qualifier only: ``e.`` not preceded by a word, a dot or a quote.
        patterns.append(r"(?<![\w.$\"])(?P<alias>" + "|".join(aliases) + r")\.")
    if params:
        patterns.append(r"\$(?P<param>" + "|".join(params) + r")\b")
    if not patterns:
        return body

    def bind(match: re.Match[str]) -> str:
        if match.lastgroup == "alias":
            return bound[match.group("alias")] + "."
        return bound["$" + match.group("param")]

    return re.sub("|".join(patterns), bind, body)


@functools.cache
def _blocks() -> dict[str, str]:
    return parse_blocks((bundled_sql_dir() / "queries.sql").read_text())


@functools.cache
def queries(schema: str) -> Queries:
    """The named queries for ``schema`` (rendered once, cached)."""
    return Queries(schema, _blocks())
