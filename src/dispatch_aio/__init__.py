"""dispatch-aio: transactional publishing and ordered, exactly-once consumers on PostgreSQL.

Public names are re-exported here; modules with a leading underscore are private.
Logging goes to the ``dispatch_aio`` logger hierarchy; nothing is configured at import.

Importing the package is cheap: a public name's module is imported when the name is
first used (``from dispatch_aio import Consumer``, ``dispatch_aio.Consumer``), so that
the command line and the pytest plugin start without the consumer, pydantic models,
OpenTelemetry or the contract registry until a command needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    ConfigurationError,
    ConsumerFailedError,
    ContractError,
    DatabaseError,
    DatabaseUnavailableError,
    DeadLetterAlreadyResolvedError,
    DeadLetterError,
    DeadLetterNotFoundError,
    DeliveryError,
    DispatchError,
    EventValidationError,
    HorizonError,
    InvalidArgumentError,
    InvalidDsnError,
    InvalidEnvelopeError,
    InvalidIdentifierError,
    InvalidPayloadError,
    InvalidSettingError,
    LifecycleError,
    NotInTransactionError,
    PayloadTooLargeError,
    PoolExhaustedError,
    RegistryError,
    ScaffoldError,
    SchemaNotMigratedError,
    SignatureVerificationError,
    SubscriberUnavailableError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
    UnsafeEndpointError,
    UsageError,
)

if TYPE_CHECKING:
    from ._consume import Consumer, ConsumerConfig, ConsumerState, ConsumerStats
    from ._contracts.models import Mismatch, compare_model_to_schema, payload_schema_from_model
    from ._contracts.scaffold import ID_PROFILES, IdProfile, add_event_type, init_contracts
    from ._deadletters import DeadLetter, DeadLetterPage, DeadLetters
    from ._delivery.config import Endpoint, FanoutConfig
    from ._delivery.inbox import Inbox, InboxResponse
    from ._delivery.signatures import WebhookSecrets, generate_secret
    from ._delivery.ssrf import refusal_reason
    from ._dispatcher import (
        DEFAULT_ACQUIRE_TIMEOUT,
        DEFAULT_MAX_PAYLOAD_BYTES,
        Dispatcher,
        EventSpec,
    )
    from ._envelope import Envelope, Event
    from ._migrate import SCHEMA_VERSION, MigrationResult, check_schema, migrate
    from ._registry import Registry
    from ._retention import PruneResult, prune
    from ._signals import HandlerSignal, Reject, RetryAfter
    from ._status import (
        ConsumerActivity,
        ConsumerHealth,
        HorizonHolder,
        StatusReport,
        consumer_status,
    )
    from ._telemetry import Telemetry

#: Where each public name lives, imported on first use (PEP 562 ``__getattr__``).
_LAZY: dict[str, str] = {
    "DEFAULT_ACQUIRE_TIMEOUT": "._dispatcher",
    "DEFAULT_MAX_PAYLOAD_BYTES": "._dispatcher",
    "ID_PROFILES": "._contracts.scaffold",
    "SCHEMA_VERSION": "._migrate",
    "Consumer": "._consume",
    "ConsumerActivity": "._status",
    "ConsumerConfig": "._consume",
    "ConsumerHealth": "._status",
    "ConsumerState": "._consume",
    "ConsumerStats": "._consume",
    "DeadLetter": "._deadletters",
    "DeadLetterPage": "._deadletters",
    "DeadLetters": "._deadletters",
    "Dispatcher": "._dispatcher",
    "Endpoint": "._delivery.config",
    "Envelope": "._envelope",
    "Event": "._envelope",
    "EventSpec": "._dispatcher",
    "FanoutConfig": "._delivery.config",
    "HandlerSignal": "._signals",
    "HorizonHolder": "._status",
    "IdProfile": "._contracts.scaffold",
    "Inbox": "._delivery.inbox",
    "InboxResponse": "._delivery.inbox",
    "MigrationResult": "._migrate",
    "Mismatch": "._contracts.models",
    "PruneResult": "._retention",
    "Registry": "._registry",
    "Reject": "._signals",
    "RetryAfter": "._signals",
    "StatusReport": "._status",
    "Telemetry": "._telemetry",
    "WebhookSecrets": "._delivery.signatures",
    "add_event_type": "._contracts.scaffold",
    "check_schema": "._migrate",
    "compare_model_to_schema": "._contracts.models",
    "consumer_status": "._status",
    "generate_secret": "._delivery.signatures",
    "init_contracts": "._contracts.scaffold",
    "migrate": "._migrate",
    "payload_schema_from_model": "._contracts.models",
    "prune": "._retention",
    "refusal_reason": "._delivery.ssrf",
}


if not TYPE_CHECKING:  # hidden from type checkers, which would type any unknown name Any

    def __getattr__(name: str) -> Any:
        """Import a public name's module on first use and keep the name here."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "DEFAULT_ACQUIRE_TIMEOUT",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ID_PROFILES",
    "SCHEMA_VERSION",
    "ConfigurationError",
    "Consumer",
    "ConsumerActivity",
    "ConsumerConfig",
    "ConsumerFailedError",
    "ConsumerHealth",
    "ConsumerState",
    "ConsumerStats",
    "ContractError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DeadLetter",
    "DeadLetterAlreadyResolvedError",
    "DeadLetterError",
    "DeadLetterNotFoundError",
    "DeadLetterPage",
    "DeadLetters",
    "DeliveryError",
    "DispatchError",
    "Dispatcher",
    "Endpoint",
    "Envelope",
    "Event",
    "EventSpec",
    "EventValidationError",
    "FanoutConfig",
    "HandlerSignal",
    "HorizonError",
    "HorizonHolder",
    "IdProfile",
    "Inbox",
    "InboxResponse",
    "InvalidArgumentError",
    "InvalidDsnError",
    "InvalidEnvelopeError",
    "InvalidIdentifierError",
    "InvalidPayloadError",
    "InvalidSettingError",
    "LifecycleError",
    "MigrationResult",
    "Mismatch",
    "NotInTransactionError",
    "PayloadTooLargeError",
    "PoolExhaustedError",
    "PruneResult",
    "Registry",
    "RegistryError",
    "Reject",
    "RetryAfter",
    "ScaffoldError",
    "SchemaNotMigratedError",
    "SignatureVerificationError",
    "StatusReport",
    "SubscriberUnavailableError",
    "Telemetry",
    "UnknownEventTypeError",
    "UnknownSchemaVersionError",
    "UnsafeEndpointError",
    "UsageError",
    "WebhookSecrets",
    "add_event_type",
    "check_schema",
    "compare_model_to_schema",
    "consumer_status",
    "generate_secret",
    "init_contracts",
    "migrate",
    "payload_schema_from_model",
    "prune",
    "refusal_reason",
]
