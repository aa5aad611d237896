"""A quicker acceptance check for flat payload schemas, in front of the full validator.

Publish validates every payload, and a consumer every payload it reads: the compiled
JSON Schema validator is the largest part of publish_many's Python time per event. Most
payload schemas, and the envelope's, are a flat object of strings (pattern, format, enum,
lengths), integers (bounds), booleans and objects whose content is not described (the
envelope's payload, checked against its own schema). For those, :func:`with_fast_path`
puts a check in front that does only what the schema asks, with exact types and one pass
over the keys.

The check only ever says "certainly valid". Anything it does not recognise, or any value
it would reject, goes to the full validator, which raises the typed error with its path
(or accepts what the check was too strict for: a float 2.0 for an integer, a subclass of
str). So the check can never accept a payload the full validator refuses, as long as each
test below is at least as strict as the validator's: the same regular expression object
the validator searches with, the same format functions, exact types.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["with_fast_path"]

_Validator = Callable[[Any], Any]
_Test = Callable[[Any], bool]

#: Keywords that describe and never constrain: ignored by both checks.
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples"})
_TOP_KEYWORDS = _ANNOTATIONS | {"type", "required", "properties", "additionalProperties"}
_STRING_KEYWORDS = _ANNOTATIONS | {"type", "pattern", "format", "enum", "minLength", "maxLength"}
_PATTERN_ONLY_KEYWORDS = _ANNOTATIONS | {"type", "pattern"}
_INTEGER_KEYWORDS = _ANNOTATIONS | {"type", "minimum", "maximum"}
_BOOLEAN_KEYWORDS = _ANNOTATIONS | {"type"}
_OBJECT_KEYWORDS = _ANNOTATIONS | {"type"}


def with_fast_path(
    schema: Mapping[str, Any],
    validator: _Validator,
    formats: Mapping[str, Callable[[str], bool]],
) -> _Validator:
    """``validator`` behind a quick check of ``schema``'s flat shape; itself if there is none.

    ``validator`` must be fastjsonschema's compilation of ``schema`` with ``formats``:
    the check reuses the regular expressions it compiled. Same return and errors.
    """
    check = _object_check(schema, _compiled_patterns(validator), formats)
    if check is None:
        return validator

    def validate(data: Any) -> Any:
        if check(data):
            return data
        return validator(data)

    return validate


def _compiled_patterns(validator: _Validator) -> Mapping[str, re.Pattern[str]] | None:
    """The validator's own compiled patterns (fastjsonschema keeps them in its globals)."""
    function = getattr(validator, "func", validator)  # compile() returns a partial
    patterns = getattr(function, "__globals__", {}).get("REGEX_PATTERNS")
    return patterns if isinstance(patterns, dict) else None


def _object_check(
    schema: Mapping[str, Any],
    patterns: Mapping[str, re.Pattern[str]] | None,
    formats: Mapping[str, Callable[[str], bool]],
) -> Callable[[Any], bool] | None:
    if not isinstance(schema, dict) or not schema.keys() <= _TOP_KEYWORDS:
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    if (
        schema.get("type") != "object"
        or type(schema.get("additionalProperties", True)) is not bool
        or not isinstance(properties, dict)
        or not isinstance(required, list)
        or not all(type(name) is str for name in required)
    ):
        return None
    tests: dict[str, _Test] = {}
    # A string with a pattern and nothing else (the usual id field) is tested inline by
    # the loop below, without a call of its own: most properties of most schemas are.
    searches: dict[str, Callable[[str], Any]] = {}
    for name, definition in properties.items():
        search = _pattern_only(definition, patterns)
        if search is not None:
            searches[name] = search
            continue
        test = _value_test(definition, patterns, formats)
        if test is None:
            return None
        tests[name] = test
    needed = frozenset(required)
    get = tests.get
    get_search = searches.get

    def check(data: Any) -> bool:
        # Every key must be a known property (an unknown one, even where allowed, is
        # left to the validator), every required one present, every value pass.
        if type(data) is not dict or not needed <= data.keys():
            return False
        for key, value in data.items():
            search = get_search(key)
            if search is not None:
                if type(value) is not str or search(value) is None:
                    return False
                continue
            test = get(key)
            if test is None or not test(value):
                return False
        return True

    return check


def _pattern_only(
    definition: Any, patterns: Mapping[str, re.Pattern[str]] | None
) -> Callable[[str], Any] | None:
    """The validator's search for a string that only has to match a pattern, or None."""
    if (
        not isinstance(definition, dict)
        or definition.get("type") != "string"
        or "pattern" not in definition
        or not definition.keys() <= _PATTERN_ONLY_KEYWORDS
        or patterns is None
    ):
        return None
    compiled = patterns.get(definition["pattern"])
    return compiled.search if compiled is not None else None


def _value_test(
    definition: Any,
    patterns: Mapping[str, re.Pattern[str]] | None,
    formats: Mapping[str, Callable[[str], bool]],
) -> _Test | None:
    if not isinstance(definition, dict):
        return None
    kind = definition.get("type")
    if kind == "string" and definition.keys() <= _STRING_KEYWORDS:
        return _string_test(definition, patterns, formats)
    if kind == "integer" and definition.keys() <= _INTEGER_KEYWORDS:
        return _integer_test(definition)
    if kind == "boolean" and definition.keys() <= _BOOLEAN_KEYWORDS:
        return _is_bool
    if kind == "object" and definition.keys() <= _OBJECT_KEYWORDS:
        return _is_dict
    return None


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _is_dict(value: Any) -> bool:
    # Exact dict: a Mapping that is not one is left to the validator.
    return type(value) is dict


def _string_test(
    definition: dict[str, Any],
    patterns: Mapping[str, re.Pattern[str]] | None,
    formats: Mapping[str, Callable[[str], bool]],
) -> _Test | None:
    search: Callable[[str], Any] | None = None
    if "pattern" in definition:
        compiled = patterns.get(definition["pattern"]) if patterns is not None else None
        if compiled is None:
            return None
        search = compiled.search
    conforms: Callable[[str], bool] | None = None
    if "format" in definition:
        conforms = formats.get(definition["format"])
        if conforms is None:  # a format the validator checks its own way
            return None
    allowed: frozenset[str] | None = None
    if "enum" in definition:
        enum = definition["enum"]
        if not isinstance(enum, list) or not all(type(item) is str for item in enum):
            return None
        allowed = frozenset(enum)
    shortest = definition.get("minLength")
    longest = definition.get("maxLength")
    for bound in (shortest, longest):
        if bound is not None and type(bound) is not int:
            return None

    if search is not None and conforms is None and allowed is None and shortest is longest:
        # Both None: the common id field, a pattern alone.
        def matches(value: Any) -> bool:
            return type(value) is str and search(value) is not None

        return matches

    def test(value: Any) -> bool:
        if type(value) is not str:
            return False
        if allowed is not None and value not in allowed:
            return False
        if shortest is not None and len(value) < shortest:
            return False
        if longest is not None and len(value) > longest:
            return False
        if search is not None and search(value) is None:
            return False
        return conforms is None or conforms(value)

    return test


def _integer_test(definition: dict[str, Any]) -> _Test | None:
    low = definition.get("minimum")
    high = definition.get("maximum")
    for bound in (low, high):
        if bound is not None and type(bound) not in (int, float):
            return None

    def test(value: Any) -> bool:
        # Exact int: a bool is refused here, a float 3.0 left to the validator.
        if type(value) is not int:
            return False
        if low is not None and value < low:
            return False
        return high is None or value <= high

    return test
