"""The worker's log output: one line per record, as text or as JSON, passwords masked.

Standard library logging only. ``text`` is ``time level logger: message``; dispatch-aio
writes the fields of a record about one event into its message (``[consumer=...
event_type=... event_id=... attempt=... dead_letter_id=...]``). ``json`` is one object
per line with ``time``, ``level``, ``logger``, ``message``, every field the record
carries in ``extra`` (``consumer``, ``event_id``, ...) and ``exception`` when there is
one. Either way a database password is masked wherever it appears (see
:func:`~dispatch_aio._dsn.redact`). Pure apart from :func:`configure_logging`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, TextIO

from .._dsn import redact

__all__ = ["LOG_FORMATS", "JsonFormatter", "RedactingFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: whatever else a record carries came in ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class RedactingFormatter(logging.Formatter):
    """Formats as ``inner`` does, then masks database passwords."""

    def __init__(self, inner: logging.Formatter | None, dsn: str | None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()
        self._dsn = dsn

    def format(self, record: logging.LogRecord) -> str:
        """The inner formatter's line, passwords masked."""
        return redact(self._inner.format(record), self._dsn)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; string values have passwords masked."""

    def __init__(self, dsn: str | None = None) -> None:
        super().__init__()
        self._dsn = dsn

    def format(self, record: logging.LogRecord) -> str:
        """``{"time", "level", "logger", "message", <extra fields>, "exception"?}``."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_") and name not in line:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(self._masked(line), ensure_ascii=False, default=str)

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, self._dsn)
        if isinstance(value, dict):
            return {k: self._masked(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._masked(v) for v in value]
        return value


def configure_logging(level: str, log_format: str, stream: TextIO, dsn: str | None) -> None:
    """Log to ``stream`` at ``level`` in ``log_format``; passwords of ``dsn`` masked.

    When the application already configured the root logger (handlers exist), its
    handlers are kept and only wrapped to mask passwords.
    """
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not root.handlers:
        ours = logging.StreamHandler(stream)
        formatter: logging.Formatter = (
            JsonFormatter(dsn) if log_format == "json" else logging.Formatter(TEXT_FORMAT)
        )
        ours.setFormatter(formatter)
        root.addHandler(ours)
    for handler in root.handlers:
        if not isinstance(handler.formatter, RedactingFormatter | JsonFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter, dsn))
