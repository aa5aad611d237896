"""The JSON Schema rules of a contracts directory: formats, compiling, error paths.

Pure functions over schemas and fastjsonschema's errors. Loading uses them to refuse
keywords fastjsonschema would not enforce as 2020-12 means them; the registry uses them
to compile validators and to name the JSON path of a failure.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import fastjsonschema

__all__ = [
    "CHECKED_FORMATS",
    "CHECK_RULES",
    "FORMATS",
    "Validator",
    "compile_schema",
    "describe",
    "is_rfc3339_datetime",
    "schema_digest",
    "schema_problems",
]

#: A compiled validator: called with a value, raises JsonSchemaValueException.
Validator = Callable[..., Any]


_RFC3339_RE: Final = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>0[1-9]|1[0-2])-(?P<day>[0-9]{2})"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])",
    re.IGNORECASE,
)


#: A valid value other than a 29 February, decided by one match: a year other than
#: 0000, a day its month always has. The rest goes to _RFC3339_RE and the calendar.
_USUAL_RE: Final = re.compile(
    r"(?!0000)[0-9]{4}-(?:"
    r"(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    r"|(?:0[13-9]|1[0-2])-(?:29|30)"
    r"|(?:0[13578]|1[02])-31"
    r")"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])",
    re.IGNORECASE,
)


def is_rfc3339_datetime(value: str) -> bool:
    """RFC 3339 ``date-time``, with real calendar days.

    fastjsonschema's built-in regex also accepts offsets without a colon (``+0200``),
    second 60 and year 0. This check agrees with the reference validator (``jsonschema``
    with ``rfc3339-validator``): those are refused, the day must exist in its month,
    and ``T`` and ``Z`` may be lower-case. Unlike a ``$``-anchored regex it does not
    accept a trailing newline.
    """
    if _USUAL_RE.fullmatch(value) is not None:  # 40 % of the time of what follows
        return True
    match = _RFC3339_RE.fullmatch(value)
    if match is None:
        return False
    year, month, day = int(match["year"]), int(match["month"]), int(match["day"])
    return year != 0 and 1 <= day <= calendar.monthrange(year, month)[1]


FORMATS: Final[dict[str, Callable[[str], bool]]] = {"date-time": is_rfc3339_datetime}

#: Formats fastjsonschema checks (its own regexes, or ours above). Any other ``format``
#: would be an annotation nobody enforces, so the registry refuses it.
CHECKED_FORMATS: Final = frozenset(
    {
        "date",
        "date-time",
        "duration",
        "email",
        "hostname",
        "idn-email",
        "idn-hostname",
        "ipv4",
        "ipv6",
        "iri",
        "iri-reference",
        "json-pointer",
        "regex",
        "relative-json-pointer",
        "time",
        "uri",
        "uri-reference",
        "uri-template",
        "uuid",
    }
)


#: The version of the rules a payload check follows here: raised whenever what the check
#: accepts changes (a format function, the fast path, how a schema is compiled). Part of
#: every :func:`schema_digest`, so an event checked under other rules is checked again.
CHECK_RULES: Final = 1


def schema_digest(schema: Mapping[str, Any]) -> int:
    """A signed 64-bit digest of ``schema`` and of the rules it is checked by.

    Two schemas share a digest only if they are the same JSON (keys in any order) and
    are checked by the same rules (:data:`CHECK_RULES`, fastjsonschema's version): a
    payload one accepts, the other accepts too. Publish stores it with each payload it
    checked (``checked_against``); a consumer with the same digest need not check again
    (docs/adr/0007-payloads-checked-once.md).
    """
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.blake2b(digest_size=8, person=b"dispatch-aio")
    digest.update(f"{CHECK_RULES}:{fastjsonschema.VERSION}:".encode())
    digest.update(text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest(), "big", signed=True)


def compile_schema(schema: Mapping[str, Any]) -> Validator:
    """Compile ``schema`` with the formats checked here and no defaults filled in."""
    return fastjsonschema.compile(dict(schema), formats=FORMATS, use_default=False)


_IDENTIFIER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _member(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER_RE.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def describe(exc: fastjsonschema.JsonSchemaValueException, root: str) -> tuple[str, str]:
    """JSON path and reason of a fastjsonschema failure.

    fastjsonschema names the failing value ``data.a.b[0]``; the path swaps ``data`` for
    ``root``. A missing required property or a property not allowed is pointed at
    directly (``$.payload.person_id``) instead of at the object holding it.
    """
    name = exc.name or "data"
    path = root + name[4:] if name.startswith("data") else root
    message = exc.message
    reason = message[len(name) + 1 :] if message.startswith(name + " ") else message
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    value = exc.value
    if exc.rule == "required" and isinstance(value, dict):
        missing = [key for key in definition.get("required", ()) if key not in value]
        if missing:
            return _member(path, str(missing[0])), "required property is missing"
    if exc.rule == "additionalProperties" and isinstance(value, dict):
        allowed = definition.get("properties", {})
        patterns = list(definition.get("patternProperties", {}))
        extra = [
            key
            for key in value
            if key not in allowed and not any(re.search(p, str(key)) for p in patterns)
        ]
        if extra:
            return _member(path, str(extra[0])), "property is not allowed by the schema"
    return path, reason


def _pointer(parts: tuple[str | int, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts) or "/"


# Where subschemas sit, so that the walk never mistakes a property *named* like a
# keyword for the keyword.
_SUBSCHEMA: Final = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SUBSCHEMA_LIST: Final = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SUBSCHEMA_MAP: Final = frozenset(
    # "dependencies" maps to schemas or to property lists; walk() skips the lists.
    {"$defs", "definitions", "dependencies", "dependentSchemas", "patternProperties", "properties"}
)

#: Keywords fastjsonschema does not implement: it would skip them silently.
_IGNORED_BY_FASTJSONSCHEMA: Final[Mapping[str, str]] = {
    "prefixItems": "2020-12 tuple validation",
    "unevaluatedProperties": "2019-09/2020-12 keyword",
    "unevaluatedItems": "2019-09/2020-12 keyword",
    "dependentSchemas": "2019-09/2020-12 keyword",
    "dependentRequired": "2019-09/2020-12 keyword",
    "$dynamicRef": "2020-12 keyword",
    "$dynamicAnchor": "2020-12 keyword",
    "$recursiveRef": "2019-09 keyword",
    "$recursiveAnchor": "2019-09 keyword",
    "$anchor": "2019-09/2020-12 keyword",
    "$vocabulary": "meta-schema keyword",
    "minContains": "2019-09/2020-12 keyword",
    "maxContains": "2019-09/2020-12 keyword",
    "contentSchema": "2019-09/2020-12 keyword",
}
#: Keywords that 2020-12 dropped but fastjsonschema still enforces: the two validators
#: would disagree.
_DROPPED_IN_2020_12: Final[Mapping[str, str]] = {
    "additionalItems": "use items with prefixItems in 2020-12 (both unsupported here)",
    "dependencies": "split into dependentRequired/dependentSchemas in 2020-12",
}
#: Keywords that may sit next to ``$ref`` without changing validation.
_REF_SIBLINGS_OK: Final = frozenset(
    {
        "$ref",
        "$comment",
        "title",
        "description",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)


def schema_problems(schema: Any, where: str) -> Iterator[tuple[str, bool]]:
    """Keywords in ``schema`` that fastjsonschema would not enforce as 2020-12 means them.

    Yields ``(problem, blocks_compile)``; a remote ``$ref`` blocks compilation because
    fastjsonschema would try to download it.
    """

    def walk(node: Any, at: tuple[str | int, ...]) -> Iterator[tuple[str, bool]]:
        if not isinstance(node, dict):
            return  # booleans are valid schemas; other types fail compilation
        for keyword in node:
            kw_at = (*at, keyword)
            if keyword in _IGNORED_BY_FASTJSONSCHEMA:
                yield (
                    f"{where}: {_pointer(kw_at)}: keyword {keyword!r} "
                    f"({_IGNORED_BY_FASTJSONSCHEMA[keyword]}) is not enforced by "
                    "fastjsonschema; express the rule with draft-7 keywords",
                    False,
                )
            elif keyword in _DROPPED_IN_2020_12:
                yield (
                    f"{where}: {_pointer(kw_at)}: keyword {keyword!r} is not part of "
                    f"JSON Schema 2020-12 ({_DROPPED_IN_2020_12[keyword]})",
                    False,
                )
        ref = node.get("$ref")
        if ref is not None:
            if not isinstance(ref, str) or not ref.startswith("#"):
                yield (
                    f"{where}: {_pointer((*at, '$ref'))}: keyword '$ref' must point inside "
                    f"the same file (got {ref!r}); remote references are not fetched",
                    True,
                )
            elif ref.startswith("#/$defs/") or ref == "#/$defs":
                yield (
                    f"{where}: {_pointer((*at, '$ref'))}: keyword '$ref' into '$defs' "
                    f"({ref!r}) is not supported; use '#/definitions/...'",
                    False,
                )
            siblings = sorted(k for k in node if k not in _REF_SIBLINGS_OK)
            if siblings:
                yield (
                    f"{where}: {_pointer((*at, '$ref'))}: keyword '$ref' has sibling "
                    f"keywords {siblings} that fastjsonschema ignores; wrap them in allOf",
                    False,
                )
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt not in CHECKED_FORMATS:
            yield (
                f"{where}: {_pointer((*at, 'format'))}: keyword 'format' value {fmt!r} "
                "is not checked by fastjsonschema; use a pattern",
                False,
            )
        items = node.get("items")
        if isinstance(items, list):
            yield (
                f"{where}: {_pointer((*at, 'items'))}: keyword 'items' as an array is "
                "draft-7 tuple validation, not valid in 2020-12",
                False,
            )
            for index, sub in enumerate(items):
                yield from walk(sub, (*at, "items", index))
        for keyword, sub in node.items():
            if keyword in _SUBSCHEMA and not (keyword == "items" and isinstance(sub, list)):
                yield from walk(sub, (*at, keyword))
            elif keyword in _SUBSCHEMA_LIST and isinstance(sub, list):
                for index, item in enumerate(sub):
                    yield from walk(item, (*at, keyword, index))
            elif keyword in _SUBSCHEMA_MAP and isinstance(sub, dict):
                for name, item in sub.items():
                    yield from walk(item, (*at, keyword, name))

    yield from walk(schema, ())
