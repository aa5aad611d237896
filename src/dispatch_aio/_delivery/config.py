"""Fan-out configuration: which subscriber lives at which URL, with which secrets.

The registry says which services subscribe to each event type (``subscribers``); this
configuration maps each subscriber name to one endpoint. A configuration file (JSON, or
TOML by its ``.toml`` suffix) looks like::

    {
      "schema": "public",
      "endpoints": {
        "coaching": {
          "url": "https://coaching.internal.example/dispatch/inbox",
          "secrets_env": "COACHING_WEBHOOK_SECRETS"
        },
        "platform-warehouse": {
          "url": "https://warehouse.example/dispatch/inbox",
          "secrets": ["whsec_..."],
          "read_timeout": 20
        }
      }
    }

Secrets are given inline or, better, through an environment variable (comma-separated,
newest first) read when the configuration is built. Building an :class:`Endpoint`
checks its URL with the SSRF guard without DNS; :meth:`FanoutConfig.load` and
:meth:`FanoutConfig.check_addresses` also resolve the host names. No other I/O.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .._errors import ConfigurationError
from .._identifiers import validate_schema_name
from .._registry import Registry
from .signatures import DEFAULT_TOLERANCE, WebhookSecrets
from .ssrf import check_endpoint_host

__all__ = ["Endpoint", "FanoutConfig", "consumer_name_for"]

_SUBSCRIBER_NAME = r"^[a-z][a-z0-9_-]{0,54}$"
_CONSUMER_PREFIX = "fanout."


def consumer_name_for(subscriber: str) -> str:
    """The consumer name of a subscriber's endpoint: ``fanout.<subscriber>``."""
    return _CONSUMER_PREFIX + subscriber


class Endpoint(BaseModel):
    """One subscriber's inbox: where to POST, how to sign, how long to wait, how to retry.

    Durations are in seconds. ``secrets`` are ``whsec_`` strings, newest first (the
    newest signs). ``retry_delays`` are the consumer's waits between attempts: their
    sum is how long a subscriber may be down before its events are dead-lettered
    (default a little over 2 hours). ``retry_after_cap`` bounds the wait a subscriber
    may ask for with ``Retry-After``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    secrets: tuple[SecretStr, ...] = ()
    secrets_env: str | None = None
    allow_private_network: bool = False
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=10.0, gt=0)
    total_timeout: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=32, ge=1, le=1024)
    max_keepalive_connections: int = Field(default=16, ge=0, le=1024)
    keepalive_expiry: float = Field(default=4.0, ge=0)
    concurrency: int = Field(default=16, ge=1, le=512)
    max_group: int = Field(default=16, ge=1, le=1000)
    retry_delays: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
    retry_after_cap: float = Field(default=300.0, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials: the signature authenticates")
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        return value

    @field_validator("retry_delays")
    @classmethod
    def _delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay < 0 for delay in value):
            raise ValueError("delays must be >= 0 seconds")
        return value

    @model_validator(mode="after")
    def _resolve_secrets(self) -> Endpoint:
        if self.secrets_env is not None:
            if self.secrets:
                raise ValueError("give secrets or secrets_env, not both")
            raw = os.environ.get(self.secrets_env, "")
            found = tuple(SecretStr(part.strip()) for part in raw.split(",") if part.strip())
            if not found:
                raise ValueError(f"environment variable {self.secrets_env} holds no secret")
            object.__setattr__(self, "secrets", found)
        if not self.secrets:
            raise ValueError("an endpoint needs secrets (or secrets_env)")
        WebhookSecrets(s.get_secret_value() for s in self.secrets)  # refuses a bad one
        host = urlsplit(self.url).hostname or ""
        check_endpoint_host(
            self.url, host, allow_private_network=self.allow_private_network, resolve=False
        )
        return self

    @property
    def host(self) -> str:
        """The URL's host name (or literal address)."""
        return urlsplit(self.url).hostname or ""

    def webhook_secrets(self) -> WebhookSecrets:
        """The endpoint's secrets, ready to sign."""
        return WebhookSecrets(
            (s.get_secret_value() for s in self.secrets), tolerance=DEFAULT_TOLERANCE
        )


class FanoutConfig(BaseModel):
    """Every subscriber endpoint of one service's fan-out; keys are registry subscriber names."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    endpoints: dict[str, Endpoint]
    db_schema: str = Field(default="public", alias="schema")

    @field_validator("endpoints")
    @classmethod
    def _names(cls, value: dict[str, Endpoint]) -> dict[str, Endpoint]:
        if not value:
            raise ValueError("at least one endpoint is needed")
        for name in value:
            if not re.match(_SUBSCRIBER_NAME, name):
                raise ValueError(
                    f"subscriber name {name!r} must match {_SUBSCRIBER_NAME} "
                    "(it names the consumer fanout.<name>)"
                )
        return value

    @field_validator("db_schema")
    @classmethod
    def _schema(cls, value: str) -> str:
        return validate_schema_name(value)

    @classmethod
    def from_mapping(cls, data: Any) -> FanoutConfig:
        """Build from parsed JSON/TOML; ConfigurationError lists what is wrong."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or '$'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ConfigurationError(f"invalid fan-out configuration: {problems}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FanoutConfig:
        """Read a JSON or TOML file, check it, and resolve every host through the SSRF guard."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
            data = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read fan-out configuration {file}: {exc}") from None
        config = cls.from_mapping(data)
        config.check_addresses()
        return config

    def check_addresses(self) -> None:
        """Resolve each endpoint's host now and refuse private addresses (UnsafeEndpointError)."""
        for endpoint in self.endpoints.values():
            check_endpoint_host(
                endpoint.url, endpoint.host, allow_private_network=endpoint.allow_private_network
            )

    def event_types_for(self, subscriber: str, registry: Registry) -> list[str]:
        """The event types whose registry entry lists ``subscriber``, sorted."""
        return [
            event_type
            for event_type in registry.event_types()
            if subscriber in registry.entry(event_type).subscribers
        ]
