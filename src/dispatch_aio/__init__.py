"""dispatch-aio: transactional publishing and ordered, exactly-once consumers on PostgreSQL.

Public names are re-exported here; modules with a leading underscore are private.
Logging goes to the ``dispatch_aio`` logger hierarchy; nothing is configured at import.
"""

from ._consume import Consumer, ConsumerConfig, ConsumerState, ConsumerStats
from ._deadletters import DeadLetter, DeadLetterPage, DeadLetters
from ._dispatcher import DEFAULT_MAX_PAYLOAD_BYTES, Dispatcher, EventSpec
from ._embedded import EmbeddedPostgres
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
    DispatchError,
    EventValidationError,
    HorizonError,
    InvalidEnvelopeError,
    InvalidIdentifierError,
    InvalidPayloadError,
    LifecycleError,
    NotInTransactionError,
    PayloadTooLargeError,
    RegistryError,
    SchemaNotMigratedError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
    UsageError,
)
from ._migrate import SCHEMA_VERSION, MigrationResult, check_schema, migrate
from ._registry import Registry
from ._retention import PruneResult, prune
from ._signals import HandlerSignal, Reject, RetryAfter
from ._status import ConsumerHealth, HorizonHolder, StatusReport, consumer_status
from ._telemetry import Telemetry

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "ConfigurationError",
    "Consumer",
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
    "DispatchError",
    "Dispatcher",
    "EmbeddedPostgres",
    "Envelope",
    "Event",
    "EventSpec",
    "EventValidationError",
    "HandlerSignal",
    "HorizonError",
    "HorizonHolder",
    "InvalidEnvelopeError",
    "InvalidIdentifierError",
    "InvalidPayloadError",
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
    "StatusReport",
    "Telemetry",
    "UnknownEventTypeError",
    "UnknownSchemaVersionError",
    "UsageError",
    "check_schema",
    "consumer_status",
    "migrate",
    "prune",
]
