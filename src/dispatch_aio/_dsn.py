"""Keeping database passwords out of messages, logs and status output.

:func:`redact` is the one function that does it. It knows every way a libpq/asyncpg DSN
can carry a password:

* URL user info, ``postgresql://app:secret@host/db``, also when the password holds an
  unencoded ``/``, ``?`` or ``@`` (the user info then runs to the last ``@``);
* the query parameters ``?password=...`` and ``?sslpassword=...``;
* the keyword form ``host=... user=app password=secret dbname=app`` (values may be
  single-quoted, with ``\\'`` escapes).

Given the DSN a text came from, it also replaces every other occurrence of that DSN's
passwords (raw, percent-decoded, unquoted, and the pieces a URL parser cuts an unencoded
``/`` password into): driver messages repeat them, for example
``invalid literal for int() with base 10: 'secret'``. Pure; no I/O.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["MASK", "passwords", "redact"]

MASK = "***"

_PASSWORD_KEYS = ("password", "sslpassword")
# key=value in a URL query (value runs to the next '&') ...
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:ssl)?password=)([^&#\s]*)")
# ... and in the keyword form (value is quoted, or runs to the next blank).
_KEYWORD_PASSWORD = re.compile(r"(?i)((?<![?&])\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)")
_URL = re.compile(r"(?i)\b(postgres(?:ql)?://)(\S*)")


def _url_userinfo_password(rest: str) -> str | None:
    """The password of ``user:password@...`` (``rest`` is what follows ``scheme://``)."""
    head = rest.split("?", 1)[0]
    at = head.rfind("@")
    if at < 0:
        at = rest.rfind("@")
    if at < 0:
        return None
    _user, sep, password = rest[:at].partition(":")
    return password if sep and password else None


def passwords(dsn: str) -> set[str]:
    """Every password ``dsn`` carries, in each spelling a message might repeat."""
    found: set[str] = set()
    url = _URL.search(dsn)
    if url is not None:
        rest = url.group(2)
        userinfo = _url_userinfo_password(rest)
        if userinfo:
            found.add(userinfo)
            # A URL parser splits an unencoded '/', '?' or '#' off the password and
            # reports the pieces as port, path or query: messages repeat the pieces.
            found.update(re.split(r"[/?#]", userinfo))
        for match in _QUERY_PASSWORD.finditer(rest):
            if match.group(2):
                found.add(match.group(2))
    else:
        for match in _KEYWORD_PASSWORD.finditer(dsn):
            value = match.group(2)
            found.add(value)
            if value.startswith("'"):
                found.add(value.strip("'").replace("\\'", "'").replace("\\\\", "\\"))
    for value in list(found):
        found.add(unquote(value))
    found.discard("")
    return found


def _mask_url(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    password = _url_userinfo_password(rest)
    if password:
        user = rest.split(":", 1)[0]
        rest = f"{user}:{MASK}" + rest[len(user) + 1 + len(password) :]
    return scheme + _QUERY_PASSWORD.sub(_mask_value, rest)


def _mask_value(match: re.Match[str]) -> str:
    # Masking twice must not eat what follows a mask ("password=***: refused").
    value = match.group(2)
    return match.group(1) + (value if value.startswith(MASK) else MASK)


def redact(text: str, *dsns: str | None) -> str:
    """``text`` with every database password replaced by ``***``: safe to print or log.

    Passwords written in any DSN form inside ``text`` are masked; so is every occurrence
    of a password of the given ``dsns`` (the DSNs ``text`` may quote or be derived from).
    """
    secrets: set[str] = set()
    for dsn in dsns:
        if dsn:
            secrets |= passwords(dsn)
    # Longest first, so that a password containing another is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL.sub(_mask_url, text)
    return _KEYWORD_PASSWORD.sub(_mask_value, text)
