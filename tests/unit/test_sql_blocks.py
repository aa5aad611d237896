"""The queries file's blocks: named queries, and the fragments they share."""

from __future__ import annotations

import re

import pytest

from dispatch_aio._sql import SqlFileError, parse_blocks, queries

FILE = """\
-- name: first
-- Its comment stays with it.
SELECT {{columns(e)}}
FROM t e WHERE {{mine(e, $2)}}

-- fragment: columns(e)
-- The comment under a header is not the fragment's text.
e.a, e.b,
e.c

-- fragment: mine(e, $owner)
e.owner = $owner AND {{tagged(e)}}

-- fragment: tagged(x)
x.tag IS NOT NULL AND "x".y = 1 AND max.x = 2

-- name: second
SELECT {{tagged(p)}} FROM t p
"""


def test_fragments_are_expanded_with_their_arguments() -> None:
    blocks = parse_blocks(FILE)
    assert set(blocks) == {"first", "second"}
    assert blocks["first"] == (
        "-- Its comment stays with it.\n"
        "SELECT e.a, e.b,\n"
        "       e.c\n"  # a fragment's next lines start where its call did
        'FROM t e WHERE e.owner = $2 AND e.tag IS NOT NULL AND "x".y = 1 AND max.x = 2'
    )
    # An alias is replaced as a qualifier only: not inside a quoted name or another word.
    assert blocks["second"] == 'SELECT p.tag IS NOT NULL AND "x".y = 1 AND max.x = 2 FROM t p'


def test_windows_line_endings_read_the_same() -> None:
    crlf = parse_blocks(FILE.replace("\n", "\r\n"))
    assert {name: text.replace("\r", "") for name, text in crlf.items()} == parse_blocks(FILE)


def test_arguments_that_name_other_parameters_are_not_replaced_twice() -> None:
    text = """\
-- name: q
SELECT {{pair(x, e, $2)}}
-- fragment: pair(e, x, $a)
e.a = x.b AND e.c = $a AND x.d = $ab
"""
    assert parse_blocks(text)["q"] == "SELECT x.a = e.b AND x.c = $2 AND e.d = $ab"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- name: q\nSELECT {{nowhere(e)}}\n", "'nowhere', which is not a fragment"),
        ("-- name: q\nSELECT {{f(e, $1)}}\n-- fragment: f(e)\ne.a\n", "it takes (e)"),
        ("-- name: q\nSELECT {{f(e)}}\n-- fragment: f(e)\ne.a -- says a\n", "holds a comment"),
        ("-- name: q\nSELECT 1\n-- name: q\nSELECT 2\n", "'q' is defined twice"),
        ("-- name: q(e)\nSELECT 1\n", "takes no parameters"),
        ("-- name: q\nSELECT {{f(e)}}\n-- fragment: f(e)\n{{f(e)}}\n", "nested deeper"),
        ("-- name: q\nSELECT 1\n-- fragment: f(e)\ne.a\n", "used by no query: f"),
        ("-- name: q\nSELECT {{f(e)}}\n-- fragment: f(1e)\ne.a\n", "not an alias or a $name"),
        ("-- name: q\nSELECT {{f(e)}}\n-- fragment: f(e)\n-- only a comment\n", "empty"),
    ],
)
def test_a_file_that_does_not_read_says_where(text: str, message: str) -> None:
    with pytest.raises(SqlFileError, match=re.escape(message)):
        parse_blocks(text)


def test_the_bundled_queries_are_whole() -> None:
    rendered = queries("public")
    for name in ("consumer_fetch_streams", "consumer_fetch_range", "prune_events"):
        text = getattr(rendered, name)
        assert "{{" not in text, name
        assert "}}" not in text, name
    # The two reads return each row's fields from one definition: the same text, each
    # with its own parameter for the consumer.
    fields = re.compile(r"SELECT r\.kind, [^\n]*\n\s*(r\.position.*?AS xip)", re.DOTALL)
    streams = fields.findall(rendered.consumer_fetch_streams)
    ranged = fields.findall(rendered.consumer_fetch_range)
    assert len(streams) == len(ranged) == 1
    assert "$9" in streams[0]
    assert "$6" not in streams[0]
    assert streams[0].replace("$9", "$6") == ranged[0]
