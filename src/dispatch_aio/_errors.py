"""The exceptions dispatch-aio raises.

Every error derives from :class:`DispatchError`::

    DispatchError
    ├── UsageError                      the API was called the wrong way
    │   ├── NotInTransactionError         publish(conn=...) outside a transaction
    │   └── LifecycleError                a Consumer started twice, reused, ...
    ├── ConfigurationError              a setting or the database is not as required
    │   ├── InvalidIdentifierError        a schema name that is not a safe identifier
    │   ├── SchemaNotMigratedError        the tables are missing or older than this code
    │   └── HorizonError                  stored transaction ids are ahead of the cluster
    ├── ContractError                   an event does not fit its contract
    │   ├── RegistryError                 the registry itself is broken (lists every problem)
    │   ├── UnknownEventTypeError
    │   ├── UnknownSchemaVersionError
    │   ├── PayloadTooLargeError
    │   └── EventValidationError          names event type, version and JSON path
    │       ├── InvalidEnvelopeError
    │       └── InvalidPayloadError
    ├── LeaseLostError                  this process no longer holds a partition's lease
    ├── DeadLetterError
    │   ├── DeadLetterNotFoundError
    │   └── DeadLetterAlreadyResolvedError
    └── DatabaseError                   the driver failed; the original is ``__cause__``
        └── DatabaseUnavailableError      nothing answers at the DSN

Messages say what happened and what to do next.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ContractError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DeadLetterAlreadyResolvedError",
    "DeadLetterError",
    "DeadLetterNotFoundError",
    "DispatchError",
    "EventValidationError",
    "HorizonError",
    "InvalidEnvelopeError",
    "InvalidIdentifierError",
    "InvalidPayloadError",
    "LeaseLostError",
    "LifecycleError",
    "NotInTransactionError",
    "PayloadTooLargeError",
    "RegistryError",
    "SchemaNotMigratedError",
    "UnknownEventTypeError",
    "UnknownSchemaVersionError",
    "UsageError",
]


class DispatchError(Exception):
    """Root of every error raised by dispatch-aio."""


class UsageError(DispatchError):
    """The API was called in a way it does not support."""


class NotInTransactionError(UsageError):
    """A connection passed to publish is not inside a transaction."""


class LifecycleError(UsageError):
    """A lifecycle object was used in a state that does not allow it."""


class ConfigurationError(DispatchError):
    """A setting, or the database, is not as dispatch-aio needs it."""


class InvalidIdentifierError(ConfigurationError):
    """A SQL identifier (schema name) is empty, too long or has unsafe characters."""


class SchemaNotMigratedError(ConfigurationError):
    """The dispatcher tables are missing or older than this version of the code."""


class HorizonError(ConfigurationError):
    """Stored transaction ids are ahead of the cluster's, so history would be invisible."""


class ContractError(DispatchError):
    """An event does not fit the contracts in the registry."""


class RegistryError(ContractError):
    """The registry or one of its schemas is broken.

    ``problems`` lists every problem found, not just the first.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"the contract registry has {len(self.problems)} problem(s):\n{lines}")


class UnknownEventTypeError(ContractError):
    """The event type is not in the registry."""

    def __init__(self, event_type: str) -> None:
        self.event_type = event_type
        super().__init__(
            f"unknown event type {event_type!r}: register it in event-types-registry.json"
        )


class UnknownSchemaVersionError(ContractError):
    """The event type exists but not at the requested schema version."""

    def __init__(self, event_type: str, schema_version: int, known: list[int]) -> None:
        self.event_type = event_type
        self.schema_version = schema_version
        self.known_versions = list(known)
        super().__init__(
            f"event type {event_type!r} has no schema version {schema_version}; "
            f"known versions: {', '.join(map(str, known)) or 'none'}"
        )


class PayloadTooLargeError(ContractError):
    """The encoded payload is larger than the configured limit."""

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        self.event_type = event_type
        self.size = size
        self.limit = limit
        super().__init__(
            f"payload of {event_type!r} is {size} bytes encoded, over the limit of {limit} "
            "bytes: store large data elsewhere and put a reference in the event"
        )


class EventValidationError(ContractError):
    """An envelope or payload failed its JSON Schema.

    ``path`` is the JSON path of the first failure (``$.payload.person_id``).
    """

    what = "event"

    def __init__(self, event_type: str, schema_version: int | None, path: str, reason: str) -> None:
        self.event_type = event_type
        self.schema_version = schema_version
        self.path = path
        self.reason = reason
        version = "?" if schema_version is None else str(schema_version)
        super().__init__(f"invalid {self.what} for {event_type} v{version} at {path}: {reason}")


class InvalidEnvelopeError(EventValidationError):
    """The envelope fails ``envelope-v1.json``."""

    what = "envelope"


class InvalidPayloadError(EventValidationError):
    """The payload fails the registered payload schema."""

    what = "payload"


class LeaseLostError(DispatchError):
    """Another process of the consumer took over partitions this process was handling.

    Raised from inside an outcome transaction, which must roll back: the events of
    those partitions are the new owner's now. Not a failure of the events: drop them.
    """

    def __init__(self, message: str, partitions: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.partitions = partitions


class DeadLetterError(DispatchError):
    """A dead-letter operation failed."""


class DeadLetterNotFoundError(DeadLetterError):
    """No dead letter with that id (for this tenant)."""

    def __init__(self, dead_letter_id: str) -> None:
        self.dead_letter_id = dead_letter_id
        super().__init__(f"no dead letter {dead_letter_id!r}")


class DeadLetterAlreadyResolvedError(DeadLetterError):
    """The dead letter was resolved before; resolution is one-shot."""

    def __init__(self, dead_letter_id: str) -> None:
        self.dead_letter_id = dead_letter_id
        super().__init__(f"dead letter {dead_letter_id!r} is already resolved")


class DatabaseError(DispatchError):
    """The database driver failed; the driver's exception is ``__cause__``."""


class DatabaseUnavailableError(DatabaseError):
    """Nothing answers at the configured DSN, or the connection was refused."""
