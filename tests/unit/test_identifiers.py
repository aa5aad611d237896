"""Identifier and id checks match the whole string: a trailing newline is not accepted."""

from __future__ import annotations

import pytest

from dispatch_aio import InvalidIdentifierError
from dispatch_aio._identifiers import validate_schema_name
from dispatch_aio._ids import is_prefixed_id, new_id


def test_an_id_followed_by_a_newline_is_not_an_id() -> None:
    good = new_id("dlq")
    assert is_prefixed_id(good, "dlq")
    assert not is_prefixed_id(good + "\n", "dlq")
    assert not is_prefixed_id(good + "\r\n", "dlq")


def test_a_non_string_is_not_an_id() -> None:
    assert not is_prefixed_id(None, "dlq")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["public\n", "dispatch\n", "a\nb"])
def test_a_schema_name_with_a_newline_is_refused(name: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        validate_schema_name(name)
