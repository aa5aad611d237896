"""Consumer settings that fail with the package's own errors.

:class:`ConsumerConfig` and :class:`HandlerOptions` are the pydantic models of
``_consumer_config`` with one difference: a bad value raises
:class:`~dispatch_aio.InvalidSettingError` (a ConfigurationError and a ValueError)
instead of pydantic's ValidationError, which sits outside the package's error tree.
Durations must also be finite: pydantic's bounds let ``inf`` through, and a retry delay
of ``nan`` or ``inf`` would silently turn retrying off.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from ._consumer_config import ConsumerConfig as _ConsumerConfig
from ._consumer_config import HandlerOptions as _HandlerOptions
from ._errors import InvalidSettingError

__all__ = ["ConsumerConfig", "HandlerOptions"]


def _problem(exc: ValidationError, what: str) -> InvalidSettingError:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or what
    shown = repr(error.get("input"))
    if len(shown) > 80:
        shown = shown[:80] + "..."
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return InvalidSettingError(f"{what} {where}: {error['msg']}, got {shown}{more}")


def _require_finite(model: Any, what: str) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise InvalidSettingError(f"{what} {name} must be a finite number, got {value!r}")


class ConsumerConfig(_ConsumerConfig):
    """How a :class:`~dispatch_aio.Consumer` runs. Durations are in seconds.

    ``retry_delays`` are the waits before each retry (default 1, 5, 15: three retries
    after the first attempt), each stretched by a random 0 to ``retry_jitter`` (30 %).
    ``max_group`` is how many events' outcomes may share one commit. A bad value raises
    InvalidSettingError when the object is built.
    """

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _problem(exc, "consumer setting") from None
        _require_finite(self, "consumer setting")


class HandlerOptions(_HandlerOptions):
    """Per-handler overrides of the consumer's retry delays and timeout (InvalidSettingError)."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _problem(exc, "handler option") from None
        _require_finite(self, "handler option")
