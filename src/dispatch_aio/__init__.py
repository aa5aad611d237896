"""dispatch-aio: transactional publishing and ordered, exactly-once consumers on PostgreSQL.

Public names are re-exported here; modules with a leading underscore are private.
Logging goes to the ``dispatch_aio`` logger hierarchy; nothing is configured at import.
"""

from ._consumer import Consumer, ConsumerState, ConsumerStats
from ._deadletters import DeadLetter, DeadLetterPage, DeadLetters
from ._delivery.config import Endpoint, FanoutConfig
from ._delivery.inbox import Inbox, InboxResponse
from ._delivery.signatures import WebhookSecrets, generate_secret
from ._delivery.ssrf import refusal_reason
from ._dispatcher import DEFAULT_MAX_PAYLOAD_BYTES, Dispatcher, EventSpec
from ._envelope import Envelope, Event
from ._errors import (
    ConfigurationError,
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
    RegistryError,
    SchemaNotMigratedError,
    SignatureVerificationError,
    SubscriberUnavailableError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
    UnsafeEndpointError,
    UsageError,
)
from ._migrate import SCHEMA_VERSION, MigrationResult, check_schema, migrate
from ._registry import Registry
from ._retention import PruneResult, prune
from ._settings import ConsumerConfig
from ._signals import HandlerSignal, Reject, RetryAfter
from ._status import ConsumerHealth, HorizonHolder, StatusReport, consumer_status
from ._telemetry import Telemetry

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "ConfigurationError",
    "Consumer",
    "ConsumerConfig",
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
    "NotInTransactionError",
    "PayloadTooLargeError",
    "PruneResult",
    "Registry",
    "RegistryError",
    "Reject",
    "RetryAfter",
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
    "check_schema",
    "consumer_status",
    "generate_secret",
    "migrate",
    "prune",
    "refusal_reason",
]
