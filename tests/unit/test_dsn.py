"""The one redaction function: no DSN form lets a password through."""

from __future__ import annotations

import pytest

from dispatch_aio._dsn import passwords, redact

SECRET = "Hunter2xyz"

FORMS = {
    "url userinfo": f"postgresql://app:{SECRET}@127.0.0.1:1/app",
    "url userinfo, percent-encoded": "postgresql://app:Hunter2%2Fxyz@127.0.0.1:1/app",
    "query parameter": f"postgresql://app@127.0.0.1:1/app?sslmode=disable&password={SECRET}",
    "query parameter first": f"postgresql://app@127.0.0.1:1/app?password={SECRET}&sslmode=off",
    "sslpassword parameter": f"postgres://app@h/app?sslpassword={SECRET}",
    "keyword form": f"host=127.0.0.1 user=app password={SECRET} dbname=app",
    "keyword form, quoted": f"host=127.0.0.1 password='{SECRET} with blanks' dbname=app",
    "keyword form, spaced": f"host=127.0.0.1 password = {SECRET} dbname=app",
    "unencoded slash": f"postgresql://app:{SECRET[:4]}/{SECRET[4:]}@127.0.0.1:1/app",
    "unencoded at": f"postgresql://app:{SECRET[:4]}@{SECRET[4:]}@127.0.0.1:1/app",
}


@pytest.mark.parametrize("dsn", FORMS.values(), ids=FORMS.keys())
def test_no_form_shows_its_password(dsn: str) -> None:
    shown = redact(dsn, dsn)
    assert "Hunt" not in shown
    assert "2xyz" not in shown
    assert "***" in shown


@pytest.mark.parametrize("dsn", FORMS.values(), ids=FORMS.keys())
def test_a_dsn_inside_a_message_is_masked_without_being_named(dsn: str) -> None:
    shown = redact(f"cannot reach the database at {dsn}: refused")
    assert "Hunt" not in shown
    assert shown.startswith("cannot reach the database at ")


def test_driver_messages_repeating_the_password_are_masked() -> None:
    dsn = f"postgresql://app:{SECRET[:4]}/{SECRET[4:]}@127.0.0.1:1/app"
    # What a URL parser makes of the unencoded slash: the first piece becomes the port.
    message = f"invalid literal for int() with base 10: '{SECRET[:4]}'"
    assert redact(message, dsn) == "invalid literal for int() with base 10: '***'"
    assert SECRET not in redact(f"password authentication failed: {SECRET}", FORMS["keyword form"])


def test_percent_decoded_password_is_masked_too() -> None:
    dsn = "postgresql://app:p%40ss%2Fword@h/db"
    assert {"p%40ss%2Fword", "p@ss/word"} <= passwords(dsn)
    assert redact("login p@ss/word refused", dsn) == "login *** refused"


def test_the_rest_of_the_dsn_stays_readable() -> None:
    assert redact(FORMS["query parameter first"]) == (
        "postgresql://app@127.0.0.1:1/app?password=***&sslmode=off"
    )
    assert redact(FORMS["keyword form"]) == "host=127.0.0.1 user=app password=*** dbname=app"
    assert redact(FORMS["url userinfo"]) == "postgresql://app:***@127.0.0.1:1/app"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@/db?host=%2Ftmp%2Fsock&port=5432",
        "postgresql:///db?host=/tmp/x",
        "host=/tmp dbname=app",
        "",
    ],
)
def test_dsns_without_password_are_unchanged(dsn: str) -> None:
    assert redact(dsn, dsn) == dsn
    assert passwords(dsn) == set()


@pytest.mark.parametrize("dsn", FORMS.values(), ids=FORMS.keys())
def test_masking_twice_changes_nothing_more(dsn: str) -> None:
    once = redact(f"cannot reach {dsn}: refused", dsn)
    assert redact(once, dsn) == once
    assert once.endswith(": refused")
