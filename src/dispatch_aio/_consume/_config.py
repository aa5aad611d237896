"""Consumer settings: one frozen object, validated when built.

A bad value raises :class:`~dispatch_aio.InvalidSettingError` (a ConfigurationError and a
ValueError) instead of pydantic's ValidationError, which sits outside the package's error
tree. Durations must also be finite: pydantic's bounds let ``inf`` through, and a retry
delay of ``nan`` or ``inf`` would silently turn retrying off.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._errors import InvalidSettingError
from .._identifiers import validate_schema_name

__all__ = ["ConsumerConfig", "HandlerOptions"]

_CONSUMER_NAME = r"^[a-z][a-z0-9_.:-]{0,62}$"


def _check_delays(value: tuple[float, ...]) -> tuple[float, ...]:
    if any(d < 0 for d in value):
        raise ValueError("delays must be >= 0 seconds")
    return value


def _problem(exc: ValidationError, what: str) -> InvalidSettingError:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or what
    shown = repr(error.get("input"))
    if len(shown) > 80:
        shown = shown[:80] + "..."
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return InvalidSettingError(f"{what} {where}: {error['msg']}, got {shown}{more}")


def _require_finite(model: BaseModel, what: str) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise InvalidSettingError(f"{what} {name} must be a finite number, got {value!r}")


class HandlerOptions(BaseModel):
    """Per-handler overrides of the consumer's retry delays and timeout (InvalidSettingError)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retry_delays: tuple[float, ...] | None = None
    timeout: float | None = Field(default=None, gt=0)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _problem(exc, "handler option") from None
        _require_finite(self, "handler option")

    @field_validator("retry_delays")
    @classmethod
    def _retry(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if value is None else _check_delays(value)


class ConsumerConfig(BaseModel):
    """How a :class:`~dispatch_aio.Consumer` runs. Durations are in seconds.

    ``retry_delays`` are the waits before each retry (default 1, 5, 15: three retries
    after the first attempt), each stretched by a random 0 to ``retry_jitter`` (30 %).
    ``max_group`` is how many events' outcomes may share one commit. ``max_buffered``
    caps the events of one type held in memory (default: the larger of 4 x
    ``batch_size`` and workers x ``max_group``): behind a head event that has no outcome
    yet, reading that type pauses at the cap, whatever waits behind it.

    Processes of one consumer split its 256 partitions through leases (ADR 0006): a
    process that stops heartbeating loses them ``lease_timeout`` seconds (default 10)
    after its last heartbeat, sent every ``lease_heartbeat`` seconds (default a third of
    the lease). The defaults suit 1 to 32 replicas. A bad value raises
    InvalidSettingError when the object is built.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_CONSUMER_NAME)
    db_schema: str = "public"
    concurrency: int = Field(default=16, ge=1, le=512)
    batch_size: int = Field(default=50, ge=1, le=10_000)
    max_group: int = Field(default=200, ge=1, le=1_000)
    poll_interval: float = Field(default=5.0, gt=0)
    retry_delays: tuple[float, ...] = (1.0, 5.0, 15.0)
    retry_jitter: float = Field(default=0.3, ge=0, le=10)
    handler_timeout: float | None = Field(default=60.0, gt=0)
    drain_timeout: float = Field(default=30.0, ge=0)
    commit_timeout: float = Field(default=15.0, gt=0)
    acquire_timeout: float = Field(default=30.0, gt=0)
    listen: bool = True
    listen_reconnect_delays: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0)
    heartbeat_interval: float = Field(default=15.0, gt=0)
    heartbeat_timeout: float = Field(default=5.0, gt=0)
    start_from: Literal["beginning", "now"] = "beginning"
    horizon_warning_after: float = Field(default=60.0, gt=0)
    max_buffered: int | None = Field(default=None, ge=1, le=1_000_000)
    lease_timeout: float = Field(default=10.0, ge=0.5, le=3600)
    lease_heartbeat: float | None = Field(default=None, gt=0)

    @property
    def heartbeat(self) -> float:
        """Seconds between a member's heartbeats: ``lease_heartbeat`` or a third of the lease."""
        return self.lease_heartbeat if self.lease_heartbeat is not None else self.lease_timeout / 3

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _problem(exc, "consumer setting") from None
        _require_finite(self, "consumer setting")

    @field_validator("db_schema")
    @classmethod
    def _schema(cls, value: str) -> str:
        return validate_schema_name(value)

    @field_validator("retry_delays")
    @classmethod
    def _retry(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        return _check_delays(value)

    @field_validator("listen_reconnect_delays")
    @classmethod
    def _reconnect(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("listen_reconnect_delays needs at least one delay")
        return _check_delays(value)
