"""The operator router's pure JSON checks: nesting depth, capped echoes, encodable text."""

from __future__ import annotations

import json

import pytest

from dispatch_aio._operate.request_json import ECHO_LIMIT, capped_error, encodable, nesting_depth


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('"[[[[{{{{"', 0),  # brackets inside a string do not nest
        ('{"a": "\\"[[["}', 1),  # nor after an escaped quote
        ('{"a": "\\\\"}', 1),  # an escaped backslash ends the escape
        ("[" * 5000 + "]" * 5000, 5000),
        ("42", 0),
    ],
)
def test_nesting_depth_counts_brackets_outside_strings(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_nesting_depth_agrees_with_the_parser_on_valid_json() -> None:
    document = {"a": [{"b": {"c": ["[", "{", {"d": []}]}}], "e": "]}"}
    assert nesting_depth(json.dumps(document)) == 7


def test_capped_error_quotes_a_short_prefix_of_a_long_input() -> None:
    error = {"type": "value_error", "loc": ("body", "note"), "msg": "bad", "input": "x" * 1000}
    capped = capped_error(error)
    assert capped["input"].startswith('"' + "x" * (ECHO_LIMIT - 1))
    assert capped["input"].endswith("... (1002 characters)")
    assert len(capped["input"]) < ECHO_LIMIT + 30
    assert error["input"] == "x" * 1000  # the original entry is left alone


def test_capped_error_leaves_short_inputs_and_non_dicts_alone() -> None:
    error = {"type": "value_error", "loc": ("body",), "msg": "bad", "input": "short"}
    assert capped_error(error) == error
    assert capped_error("not a dict") == "not a dict"


def test_encodable_replaces_lone_surrogates_everywhere() -> None:
    value = {"k\ud800": ["a\udfff", {"n": 1}], "ok": "é"}
    assert encodable(value) == {"k?": ["a?", {"n": 1}], "ok": "é"}
    json.dumps(encodable(value)).encode("utf-8")  # encodes without error
