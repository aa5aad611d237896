"""dispatch-aio: transactional publishing and ordered, exactly-once consumers on PostgreSQL.

Public names are re-exported here; modules with a leading underscore are private.
Logging goes to the ``dispatch_aio`` logger hierarchy; nothing is configured at import.
"""

from ._consume import Consumer, ConsumerConfig, ConsumerState, ConsumerStats
from ._contracts.models import Mismatch, compare_model_to_schema, payload_schema_from_model
from ._contracts.scaffold import ID_PROFILES, IdProfile, add_event_type, init_contracts
from ._deadletters import DeadLetter, DeadLetterPage, DeadLetters
from ._delivery.config import Endpoint, FanoutConfig
from ._delivery.inbox import Inbox, InboxResponse
from ._delivery.signatures import WebhookSecrets, generate_secret
from ._delivery.ssrf import refusal_reason
from ._dispatcher import DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_MAX_PAYLOAD_BYTES, Dispatcher, EventSpec
from ._envelope import Envelope, Event
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
