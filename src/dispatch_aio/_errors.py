"""The exceptions dispatch-aio raises.

Every error derives from :class:`DispatchError`; every public call raises nothing else
for bad input (wrong types, NaN, NUL, lone surrogates, out-of-range times, deep
nesting). Where Python has a natural built-in for the mistake, the error is that too
(``except ValueError`` still catches an invalid payload)::

    DispatchError
    ├── UsageError                      the API was called the wrong way
    │   ├── InvalidArgumentError          wrong type or value of an argument
    │   │                                 (also TypeError and ValueError)
    │   ├── NotInTransactionError         publish(conn=...) outside a transaction
    │   └── LifecycleError                a Consumer started twice, reused, ...
    ├── ConfigurationError              a setting or the database is not as required
    │   ├── InvalidSettingError           a setting of the wrong type or value, NaN or
    │   │                                 infinite (also a ValueError)
    │   ├── InvalidIdentifierError        a schema name that is not a safe identifier
    │   │                                 (also a ValueError)
    │   ├── InvalidDsnError               a DSN that does not parse (also a ValueError)
    │   ├── UnsafeEndpointError           a fan-out endpoint on a private address (SSRF)
    │   ├── SchemaNotMigratedError        the tables are missing or older than this code
    │   └── HorizonError                  stored transaction ids are ahead of the cluster
    ├── ContractError                   an event does not fit its contract
    │   ├── RegistryError                 the registry itself is broken (lists every problem)
    │   ├── ScaffoldError                 a contracts directory cannot be made or extended as asked
    │   ├── UnknownEventTypeError
    │   ├── UnknownSchemaVersionError
    │   ├── PayloadTooLargeError          (also a ValueError)
    │   └── EventValidationError          names event type, version and JSON path
    │       │                             (also a ValueError)
    │       ├── InvalidEnvelopeError        e.g. occurred_at outside the accepted range
    │       └── InvalidPayloadError         e.g. nested deeper than the accepted depth
    ├── ConsumerFailedError             a bug stopped a consumer; the bug is ``__cause__``
    ├── LeaseLostError                  this process no longer holds a partition's lease
    ├── DeadLetterError
    │   ├── DeadLetterNotFoundError
    │   └── DeadLetterAlreadyResolvedError
    ├── DeliveryError                   cross-service delivery failed
    │   ├── SignatureVerificationError    a webhook signature or timestamp does not verify
    │   └── SubscriberUnavailableError    a subscriber answered 5xx (the event is retried)
    └── DatabaseError                   the driver failed; the original is ``__cause__``
        └── DatabaseUnavailableError      nothing answers at the DSN
            └── PoolExhaustedError          no pool connection came free within the timeout

Messages say what happened and what to do next.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConsumerFailedError",
    "ContractError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DeadLetterAlreadyResolvedError",
    "DeadLetterError",
    "DeadLetterNotFoundError",
    "DeliveryError",
    "DispatchError",
    "EventValidationError",
    "HorizonError",
    "InvalidArgumentError",
    "InvalidDsnError",
    "InvalidEnvelopeError",
    "InvalidIdentifierError",
    "InvalidPayloadError",
    "InvalidSettingError",
    "LeaseLostError",
    "LifecycleError",
    "NotInTransactionError",
    "PayloadTooLargeError",
    "PoolExhaustedError",
    "RegistryError",
    "ScaffoldError",
    "SchemaNotMigratedError",
    "SignatureVerificationError",
    "SubscriberUnavailableError",
    "UnknownEventTypeError",
    "UnknownSchemaVersionError",
    "UnsafeEndpointError",
    "UsageError",
]


class DispatchError(Exception):
    """Root of every error raised by dispatch-aio."""


class UsageError(DispatchError):
    """The API was called in a way it does not support."""


class InvalidArgumentError(UsageError, TypeError, ValueError):
    """An argument of a public call has the wrong type or value; nothing was done."""


class NotInTransactionError(UsageError):
    """A connection passed to publish is not inside a transaction."""


class LifecycleError(UsageError):
    """A lifecycle object was used in a state that does not allow it."""


class ConfigurationError(DispatchError):
    """A setting, or the database, is not as dispatch-aio needs it."""


class InvalidSettingError(ConfigurationError, ValueError):
    """A setting has the wrong type or value (NaN and infinity included); nothing was built."""


class InvalidIdentifierError(ConfigurationError, ValueError):
    """A SQL identifier (schema name) is empty, too long or has unsafe characters."""


class InvalidDsnError(ConfigurationError, ValueError):
    """A DSN that does not parse; nothing was attempted. The message masks its password."""


class UnsafeEndpointError(ConfigurationError):
    """A fan-out endpoint is, or resolves to, an address the SSRF guard refuses.

    ``reason`` says which kind (loopback, private, link-local, cloud metadata, ...).
    """

    def __init__(self, endpoint: str, host: str, reason: str) -> None:
        self.endpoint = endpoint
        self.host = host
        self.reason = reason
        super().__init__(
            f"endpoint {endpoint!r}: {host} is {reason}; fan-out refuses such addresses "
            "unless the endpoint sets allow_private_network = true"
        )


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


class ScaffoldError(ContractError):
    """A contracts directory cannot be created or extended as asked; nothing was written."""


class UnknownEventTypeError(ContractError):
    """The event type is not in the registry.

    ``registry`` is the registry file that was searched, when known.
    """

    def __init__(self, event_type: str, registry: str | None = None) -> None:
        self.event_type = event_type
        self.registry = registry
        where = f" in {registry}" if registry else ""
        super().__init__(
            f"unknown event type {event_type!r}{where}: add it to that registry, or use "
            "your own contracts directory: pass registry=Registry.load(DIR) to Dispatcher "
            "and Consumer, or set DISPATCH_AIO_CONTRACTS=DIR (see docs/contracts.md)"
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


class PayloadTooLargeError(ContractError, ValueError):
    """The encoded payload is larger than the configured limit."""

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        self.event_type = event_type
        self.size = size
        self.limit = limit
        super().__init__(
            f"payload of {event_type!r} is {size} bytes encoded, over the limit of {limit} "
            "bytes: store large data elsewhere and put a reference in the event"
        )


class EventValidationError(ContractError, ValueError):
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


class DeliveryError(DispatchError):
    """Cross-service delivery (fan-out or inbox) failed."""


class SignatureVerificationError(DeliveryError):
    """A webhook request's signature or timestamp does not verify.

    ``reason`` is for the receiver's logs only: never send it back to the caller.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"webhook signature refused: {reason}")


class SubscriberUnavailableError(DeliveryError):
    """A subscriber answered with a server error; the consumer retries the event."""

    def __init__(self, endpoint: str, status: int) -> None:
        self.endpoint = endpoint
        self.status = status
        super().__init__(f"subscriber {endpoint!r} answered HTTP {status}; retrying later")


class DatabaseError(DispatchError):
    """The database driver failed; the driver's exception is ``__cause__``."""


class DatabaseUnavailableError(DatabaseError):
    """Nothing answers at the configured DSN, or the connection was refused."""


class PoolExhaustedError(DatabaseUnavailableError):
    """Every connection of the pool stayed in use for the whole acquire timeout.

    ``max_size`` is the pool's size and ``timeout`` the seconds waited.
    """

    def __init__(self, what: str, max_size: int | None, timeout: float) -> None:
        self.max_size = max_size
        self.timeout = timeout
        size = f"all {max_size} connections" if max_size is not None else "every connection"
        super().__init__(
            f"{what}: {size} of the pool stayed in use for {timeout:g}s. Give the pool more "
            "connections (a Consumer on the same pool needs concurrency + 2 of them), "
            "publish on a connection you already hold (conn=...), or raise acquire_timeout"
        )


class ConsumerFailedError(DispatchError):
    """A bug inside the consumer stopped it (state FAILED); the bug is ``__cause__``.

    Raised by ``Consumer.wait()``; ``dispatch-aio worker`` exits non-zero with it, so a
    supervisor restarts the process. Events in flight run again after the restart.
    """
