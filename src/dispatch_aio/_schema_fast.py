"""A fast accepting path in front of a compiled fastjsonschema validator. Pure: no I/O.

Most payload schemas are flat objects whose properties are strings (pattern, date-time,
length, enum of strings), integers (bounds) or booleans. fastjsonschema's code for them
spends more time on its own bookkeeping (a set of the keys, one removal per property,
two type checks per value) than on the checks themselves, and the consumer runs it once
per event. :func:`with_fast_path` compiles, for such a schema, a function that checks
the same things directly and accepts a payload only when every one of them holds; any
other payload (and any payload of a schema outside that shape) goes to fastjsonschema's
validator, which gives the verdict and the error message.

The fast path is sound by construction: each of its checks implies the corresponding
check of fastjsonschema, and it never accepts on its own what fastjsonschema would
refuse. Its checks are a subset in these ways:

- the object must be exactly a ``dict`` (fastjsonschema: any ``dict``);
- a string must be exactly a ``str``, an integer exactly an ``int`` (fastjsonschema
  also takes a float with an integral value), a boolean exactly a ``bool``;
- patterns use the very regex objects fastjsonschema compiled, and ``format`` only the
  format functions it was given (any other format: no fast path);
- every keyword it does not know, at the top or in a property, means no fast path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["with_fast_path"]

_Validator = Callable[..., Any]

#: Keywords that only annotate: they never change a verdict.
_ANNOTATIONS: Final = frozenset({"title", "description", "examples", "$comment"})
_TOP_KEYWORDS: Final = _ANNOTATIONS | {
    "$schema",
    "$id",
    "type",
    "properties",
    "required",
    "additionalProperties",
}
_DRAFT_2020_12: Final = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
    }
)
_PROPERTY_KEYWORDS: Final = {
    "string": _ANNOTATIONS | {"type", "pattern", "format", "minLength", "maxLength", "enum"},
    "integer": _ANNOTATIONS | {"type", "minimum", "maximum"},
    "boolean": _ANNOTATIONS | {"type"},
}
_TYPE_NAMES: Final = {"string": "str", "integer": "int", "boolean": "bool"}
#: Inclusive bounds, as the comparison a valid value passes.
_BOUNDS: Final = (("minLength", ">="), ("maxLength", "<="), ("minimum", ">="), ("maximum", "<="))


class _Unsupported(Exception):
    """The schema is outside the shape the fast path checks."""


def with_fast_path(schema: Mapping[str, Any], validator: _Validator) -> _Validator:
    """``validator`` (fastjsonschema's, for ``schema``) behind a fast accepting path.

    The result validates like ``validator``: it returns the data when valid and raises
    what ``validator`` raises otherwise. ``validator`` itself comes back unchanged when
    the schema is outside the fast path's shape (see the module doc).
    """
    try:
        return _compile(schema, validator)
    except _Unsupported:
        return validator


def _compile(schema: Mapping[str, Any], validator: _Validator) -> _Validator:
    if not isinstance(validator, functools.partial):
        raise _Unsupported
    regexes: dict[str, Any] = validator.func.__globals__.get("REGEX_PATTERNS", {})
    formats: dict[str, Any] = validator.keywords.get("custom_formats", {})
    if (
        not schema.keys() <= _TOP_KEYWORDS
        or schema.get("$schema") not in _DRAFT_2020_12
        or schema.get("type") != "object"
    ):
        raise _Unsupported
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if (
        not isinstance(properties, dict)
        or not isinstance(required, list)
        or not all(isinstance(name, str) and name in properties for name in required)
        or len(set(required)) != len(required)
        or (extra is not True and extra is not False)
    ):
        raise _Unsupported
    names: dict[str, Any] = {"full": validator}
    lines = ["def validate(data):"]
    lines.append("    if type(data) is not dict: return full(data)")
    names["REQUIRED"] = frozenset(required)
    names["KNOWN"] = frozenset(properties)
    if extra is False and set(required) == set(properties):
        lines.append("    if data.keys() != KNOWN: return full(data)")
    elif extra is False:
        lines.append("    keys = data.keys()")
        lines.append("    if not (keys >= REQUIRED and keys <= KNOWN): return full(data)")
    elif required:
        lines.append("    if not data.keys() >= REQUIRED: return full(data)")
    for index, (name, definition) in enumerate(properties.items()):
        if not isinstance(name, str):
            raise _Unsupported
        checks = _checks(f"v{index}", definition, index, names, regexes, formats)
        if name in required:
            lines.append(f"    v{index} = data[{name!r}]")
            lines.append(f"    if not ({checks}): return full(data)")
        else:
            lines.append(f"    if {name!r} in data:")
            lines.append(f"        v{index} = data[{name!r}]")
            lines.append(f"        if not ({checks}): return full(data)")
    lines.append("    return data")
    namespace: dict[str, Any] = dict(names)
    # The code is built above from names and numbers checked there; values go through
    # the namespace, never into the text (property names only as their repr).
    exec("\n".join(lines), namespace)
    fast: _Validator = namespace["validate"]
    return fast


def _checks(
    variable: str,
    definition: Any,
    index: int,
    names: dict[str, Any],
    regexes: Mapping[str, Any],
    formats: Mapping[str, Any],
) -> str:
    """One boolean expression: ``variable`` passes every check of ``definition``."""
    if not isinstance(definition, dict):
        raise _Unsupported
    kind = definition.get("type")
    if not isinstance(kind, str) or kind not in _PROPERTY_KEYWORDS:
        raise _Unsupported
    if not definition.keys() <= _PROPERTY_KEYWORDS[kind]:
        raise _Unsupported
    checks = [f"type({variable}) is {_TYPE_NAMES[kind]}"]
    # Only the keywords of the property's own type are allowed above: a string's
    # length, an integer's value.
    measure = f"len({variable})" if kind == "string" else variable
    for keyword, operator in _BOUNDS:
        if keyword in definition:
            bound = definition[keyword]
            if type(bound) is not int:
                raise _Unsupported
            checks.append(f"{measure} {operator} {bound!r}")
    if "pattern" in definition:
        regex = regexes.get(definition["pattern"])
        if regex is None:
            raise _Unsupported
        names[f"P{index}"] = regex.search
        checks.append(f"P{index}({variable})")
    if "format" in definition:
        check = formats.get(definition["format"])
        if not callable(check):
            raise _Unsupported
        names[f"F{index}"] = check
        checks.append(f"F{index}({variable})")
    if "enum" in definition:
        values = definition["enum"]
        if not isinstance(values, list) or not all(type(v) is str for v in values):
            raise _Unsupported
        names[f"E{index}"] = frozenset(values)
        checks.append(f"{variable} in E{index}")
    return " and ".join(checks)
