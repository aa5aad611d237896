"""dispatch-aio: transactional publishing and ordered, exactly-once consumers on PostgreSQL.

Public names are re-exported here; modules with a leading underscore are private.
Logging goes to the ``dispatch_aio`` logger hierarchy; nothing is configured at import.
"""

from ._consumer import Consumer, ConsumerState, ConsumerStats
from ._consumer_config import ConsumerConfig
from ._contracts.models import Mismatch, compare_model_to_schema, payload_schema_from_model
from ._contracts.scaffold import ID_PROFILES, IdProfile, add_event_type, init_contracts
from ._deadletters import DeadLetter, DeadLetterPage, DeadLetters
from ._dispatcher import DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_MAX_PAYLOAD_BYTES, Dispatcher, EventSpec
from ._embedded import EmbeddedPostgres
from ._envelope import Envelope, Event
from ._errors import (
    ConfigurationError,
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
    PoolExhaustedError,
    RegistryError,
    ScaffoldError,
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
    "DEFAULT_ACQUIRE_TIMEOUT",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ID_PROFILES",
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
    "IdProfile",
    "InvalidEnvelopeError",
    "InvalidIdentifierError",
    "InvalidPayloadError",
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
    "StatusReport",
    "Telemetry",
    "UnknownEventTypeError",
    "UnknownSchemaVersionError",
    "UsageError",
    "add_event_type",
    "check_schema",
    "compare_model_to_schema",
    "consumer_status",
    "init_contracts",
    "migrate",
    "payload_schema_from_model",
    "prune",
]
