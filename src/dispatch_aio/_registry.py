"""The event-type registry and the JSON Schema validation of envelopes and payloads.

A contracts directory has this layout::

    event-types-registry.json
    event-envelope/schema/envelope-v1.json
    <contract>/schema/payloads/<event_type>-v<N>.json

:meth:`Registry.load` reads it, checks everything it can up front (shape of the registry,
every referenced file, every schema) and compiles one validator per schema with
fastjsonschema. After that, validating a payload is a dict lookup plus a call of the
compiled function.

Schemas are written against JSON Schema 2020-12 but may only use keywords that
fastjsonschema (drafts 4, 6 and 7) enforces. A keyword it would skip without a word,
such as ``prefixItems`` or ``unevaluatedProperties``, would turn into a rule the
contract states and nobody checks, so loading refuses it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast

import fastjsonschema
from pydantic import BaseModel

from ._contracts.entries import EventTypeEntry, Status, VersionEntry
from ._contracts.loading import (
    ENVELOPE_SCHEMA_PATH,
    REGISTRY_FILENAME,
    contracts_fingerprint,
    load_contracts,
)
from ._contracts.models import Mismatch, compare_model_to_schema
from ._contracts.schema_rules import Validator, compile_schema, describe, schema_digest
from ._errors import (
    ContractError,
    InvalidEnvelopeError,
    InvalidPayloadError,
    UnknownEventTypeError,
    UnknownSchemaVersionError,
)
from ._resources import bundled_contracts_dir

__all__ = [
    "CONTRACTS_ENV_VAR",
    "ENVELOPE_SCHEMA_PATH",
    "REGISTRY_FILENAME",
    "EventTypeEntry",
    "Registry",
    "Status",
    "VersionEntry",
]

#: Environment variable naming a contracts directory to use instead of the bundled one.
CONTRACTS_ENV_VAR: Final = "DISPATCH_AIO_CONTRACTS"

#: Registries loaded lately, by class, directory and fingerprint of its files (see load).
_LOADED: dict[tuple[type[Registry], str, bytes], Registry] = {}
_LOADED_LIMIT: Final = 8


#: Top-level envelope schema keywords under which each field can be checked on its own.
_PLAIN_ENVELOPE_KEYWORDS: Final = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "examples",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "definitions",
    }
)


# --------------------------------------------------------------------------- the registry


class Registry:
    """Event types, their payload schemas and compiled validators.

    Build one with :meth:`load`; an instance is immutable and safe to share between
    tasks and threads. Every validator is compiled during ``load``, so validation never
    compiles anything.
    """

    __slots__ = (
        "_digests",
        "_entries",
        "_envelope_schema",
        "_envelope_validator",
        "_field_validators",
        "_narrowed",
        "_root",
        "_schemas",
        "_validators",
    )

    def __init__(
        self,
        root: Path,
        entries: dict[str, EventTypeEntry],
        schemas: dict[tuple[str, int], dict[str, Any]],
        validators: dict[tuple[str, int], Validator],
        envelope_validator: Validator,
        envelope_schema: dict[str, Any] | None = None,
    ) -> None:
        """Wrap already checked parts; use :meth:`load` instead of calling this."""
        self._root = root
        self._entries = entries
        self._schemas = schemas
        self._digests = {key: schema_digest(schema) for key, schema in schemas.items()}
        self._validators = validators
        self._envelope_validator = envelope_validator
        self._envelope_schema = copy.deepcopy(envelope_schema or {})
        self._envelope_schema.pop("examples", None)
        self._narrowed: dict[tuple[str, ...], Validator] = {}
        self._field_validators: dict[str, Validator | None] = {}

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Registry:
        """Load and check a contracts directory.

        The directory is ``path`` if given, else the ``DISPATCH_AIO_CONTRACTS``
        environment variable (read now, on every call), else the copy bundled with the
        package. Every problem found is collected and reported together in one
        :class:`RegistryError`: registry shape, missing or unparsable files, schemas
        that do not compile, duplicate or missing versions, unknown statuses, examples
        that fail their own schema, and keywords fastjsonschema would ignore.

        Loading a directory whose files are the same, path and content, as in a load
        before returns that load's registry (a registry is read-only); a change to any
        file under the directory makes the next load read it again.
        """
        if path is not None:
            root = Path(path)
        elif env := os.environ.get(CONTRACTS_ENV_VAR):
            root = Path(env)
        else:
            root = bundled_contracts_dir()
        # A registry is never changed once loaded, so one loaded from the same files is
        # handed out again: every Dispatcher and Consumer made without a registry loads
        # one, and parsing and compiling the bundled contracts takes some 60 ms.
        fingerprint = contracts_fingerprint(root)
        key = None if fingerprint is None else (cls, str(root), fingerprint)
        if key is not None and (cached := _LOADED.get(key)) is not None:
            return cached
        parts = load_contracts(root)
        registry = cls(
            root,
            parts.entries,
            parts.schemas,
            parts.validators,
            parts.envelope_validator,
            parts.envelope_schema,
        )
        if key is not None:
            while len(_LOADED) >= _LOADED_LIMIT:
                del _LOADED[next(iter(_LOADED))]
            _LOADED[key] = registry
        return registry

    # -- lookups ---------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The contracts directory this registry was loaded from."""
        return self._root

    def event_types(self) -> list[str]:
        """All registered event types, sorted."""
        return sorted(self._entries)

    def __contains__(self, event_type: object) -> bool:
        """True when ``event_type`` is registered."""
        return event_type in self._entries

    def entry(self, event_type: str) -> EventTypeEntry:
        """The registry entry of ``event_type``; raises UnknownEventTypeError."""
        entry = self._entries.get(event_type) if isinstance(event_type, str) else None
        if entry is None:
            raise UnknownEventTypeError(event_type, self._registry_file())
        return entry

    def versions(self, event_type: str) -> list[int]:
        """The schema versions of ``event_type``, ascending; raises UnknownEventTypeError."""
        return [item.version for item in self.entry(event_type).versions]

    def current_version(self, event_type: str) -> int:
        """The version publish uses by default; raises UnknownEventTypeError."""
        return self.entry(event_type).current_version

    def payload_schema(self, event_type: str, version: int | None = None) -> dict[str, Any]:
        """A deep copy of the payload schema (current version unless ``version`` is given).

        Raises UnknownEventTypeError or UnknownSchemaVersionError.
        """
        return copy.deepcopy(self._schemas[self._key(event_type, version)])

    def example_payload(self, event_type: str, version: int | None = None) -> dict[str, Any]:
        """A deep copy of the first example of the payload schema.

        Uses the current version unless ``version`` is given. Raises
        UnknownEventTypeError, UnknownSchemaVersionError, or ContractError when the
        schema has no examples.
        """
        key = self._key(event_type, version)
        examples = self._schemas[key].get("examples")
        if not examples:
            raise ContractError(f"the schema of {event_type} v{key[1]} has no examples")
        return cast(dict[str, Any], copy.deepcopy(examples[0]))

    def compare_model(
        self, event_type: str, model: type[BaseModel], version: int | None = None
    ) -> list[Mismatch]:
        """Where ``model`` and the payload schema of ``event_type`` disagree (empty: agree).

        Uses the current version unless ``version`` is given; each mismatch names the
        field by its JSON path. Raises UnknownEventTypeError or UnknownSchemaVersionError.
        """
        return compare_model_to_schema(model, self._schemas[self._key(event_type, version)])

    def compare_models(self, models: Mapping[str, type[BaseModel]]) -> dict[str, list[Mismatch]]:
        """:meth:`compare_model` for each ``{event_type: model}`` (current versions).

        Raises UnknownEventTypeError for a type the registry does not know.
        """
        return {event_type: self.compare_model(event_type, m) for event_type, m in models.items()}

    def payload_digest(self, event_type: str, version: int) -> int:
        """The digest of the payload schema of ``event_type`` at ``version``.

        What publish stores with each payload it checked (``checked_against``): another
        registry whose schema has the same digest accepts every payload this one does.
        Raises UnknownEventTypeError or UnknownSchemaVersionError.
        """
        digest = self._digests.get((event_type, version)) if _is_key(event_type, version) else None
        if digest is None:
            raise self._lookup_error(event_type, version)
        return digest

    @property
    def payload_digests(self) -> Mapping[tuple[str, int], int]:
        """:meth:`payload_digest` of every (event type, version), read-only."""
        return MappingProxyType(self._digests)

    # -- validation --------------------------------------------------------------------

    def validate_envelope(self, envelope: Mapping[str, Any]) -> None:
        """Check ``envelope`` against ``envelope-v1.json`` (the payload only as an object).

        Raises InvalidEnvelopeError naming the event type and version read from the
        envelope (when they are usable) and the JSON path of the first failure, e.g.
        ``$.occurred_at``. Use :meth:`validate_event` to check the payload as well.
        """
        data: Any = envelope
        if not isinstance(data, dict) and isinstance(data, Mapping):
            data = dict(data)  # fastjsonschema only recognises dict as an object
        try:
            self._envelope_validator(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            event_type, version = _envelope_identity(data)
            path, reason = describe(exc, "$")
            raise InvalidEnvelopeError(event_type, version, path, reason) from None

    def validate_payload(self, event_type: str, version: int, payload: Any) -> None:
        """Check ``payload`` against the schema of ``event_type`` at ``version``.

        Raises UnknownEventTypeError, UnknownSchemaVersionError, or InvalidPayloadError
        whose ``path`` is the JSON path of the first failure, rooted at ``$.payload``
        (``$.payload.person_id``).
        """
        validator = (
            self._validators.get((event_type, version)) if _is_key(event_type, version) else None
        )
        if validator is None:
            raise self._lookup_error(event_type, version)
        try:
            validator(payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            path, reason = describe(exc, "$.payload")
            raise InvalidPayloadError(event_type, version, path, reason) from None

    def validate_event(self, envelope: Mapping[str, Any]) -> None:
        """Check an envelope and then its payload against the registered schema.

        Raises the errors of :meth:`validate_envelope` and :meth:`validate_payload`.
        """
        self.validate_envelope(envelope)
        self.validate_payload(
            envelope["event_type"], envelope["schema_version"], envelope["payload"]
        )

    def envelope_required_fields(self) -> tuple[str, ...]:
        """The fields the envelope schema requires, as read at :meth:`load`."""
        return tuple(self._envelope_schema.get("required", ()))

    def envelope_fields_validator(self, required: tuple[str, ...]) -> Validator:
        """A validator of the envelope schema with ``required`` narrowed to these fields.

        Compiled from the schema read at :meth:`load` (never from disk again), once per
        registry and tuple of fields; for checking a few fields of many envelopes fast.
        """
        validator = self._narrowed.get(required)
        if validator is None:
            schema = copy.deepcopy(self._envelope_schema)
            schema["required"] = list(required)
            validator = self._narrowed[required] = compile_schema(schema)
        return validator

    def envelope_field_validator(self, name: str) -> Validator | None:
        """A validator of one envelope field's value, or None where there cannot be one.

        Checking each field alone equals checking the envelope only when the schema
        relates no fields to each other: its top level holds nothing but ``type``,
        ``properties``, ``required``, ``additionalProperties`` and annotations, and
        ``name`` is one of its properties. Otherwise None: validate whole envelopes.
        Compiled from the schema read at :meth:`load`, once per registry and field.
        """
        if name in self._field_validators:
            return self._field_validators[name]
        schema = self._envelope_schema
        properties = schema.get("properties")
        validator = None
        if (
            schema.keys() <= _PLAIN_ENVELOPE_KEYWORDS
            and isinstance(properties, dict)
            and isinstance(properties.get(name), dict | bool)
        ):
            field = properties[name]
            if isinstance(field, bool):
                field = {} if field else {"not": {}}
            # Local references resolve against the definitions of the whole schema, under
            # its $id: without one, fastjsonschema would try to fetch them.
            scope: dict[str, Any] = {k: schema[k] for k in ("$id", "definitions") if k in schema}
            validator = compile_schema({**scope, **field})
        self._field_validators[name] = validator
        return validator

    # -- internals ---------------------------------------------------------------------

    def _key(self, event_type: str, version: int | None) -> tuple[str, int]:
        if version is None:
            return (event_type, self.entry(event_type).current_version)
        if not _is_key(event_type, version) or (event_type, version) not in self._schemas:
            raise self._lookup_error(event_type, version)
        return (event_type, version)

    def _lookup_error(self, event_type: str, version: int) -> Exception:
        entry = self._entries.get(event_type) if isinstance(event_type, str) else None
        if entry is None:
            return UnknownEventTypeError(event_type, self._registry_file())
        return UnknownSchemaVersionError(
            event_type, version, [item.version for item in entry.versions]
        )

    def _registry_file(self) -> str:
        where = str(self._root / REGISTRY_FILENAME)
        return f"{where} (the bundled registry)" if self._root == bundled_contracts_dir() else where

    def __repr__(self) -> str:
        return f"<Registry {len(self._entries)} event types from {str(self._root)!r}>"


# --------------------------------------------------------------------------- error paths


def _is_key(event_type: Any, version: Any) -> bool:
    """True when ``(event_type, version)`` can be a registry key at all (hashable, typed)."""
    return (
        isinstance(event_type, str) and isinstance(version, int) and not isinstance(version, bool)
    )


def _envelope_identity(data: Any) -> tuple[str, int | None]:
    if not isinstance(data, dict):
        return "?", None
    event_type = data.get("event_type")
    version = data.get("schema_version")
    return (
        event_type if isinstance(event_type, str) else "?",
        version if isinstance(version, int) and not isinstance(version, bool) else None,
    )
