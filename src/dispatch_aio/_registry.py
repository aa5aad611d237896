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

import calendar
import copy
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

import fastjsonschema
from pydantic import BaseModel

from ._contracts.fastcheck import with_fast_path
from ._contracts.models import Mismatch, compare_model_to_schema
from ._errors import (
    ContractError,
    InvalidEnvelopeError,
    InvalidPayloadError,
    RegistryError,
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
    "VersionEntry",
]

#: Environment variable naming a contracts directory to use instead of the bundled one.
CONTRACTS_ENV_VAR: Final = "DISPATCH_AIO_CONTRACTS"
#: File name of the registry inside a contracts directory.
REGISTRY_FILENAME: Final = "event-types-registry.json"
#: Path of the envelope schema, relative to the contracts directory.
ENVELOPE_SCHEMA_PATH: Final = "event-envelope/schema/envelope-v1.json"

_SCHEMA_URIS: Final = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
    }
)
_STATUSES: Final = frozenset({"active", "deprecated"})
_EVENT_TYPE_RE: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")
_SLUG_RE: Final = re.compile(r"[a-z][a-z0-9]*([_-][a-z0-9]+)*\Z")
_ENTRY_KEYS: Final = frozenset(
    {"contract", "producer", "subscribers", "current_version", "versions"}
)
_VERSION_KEYS: Final = frozenset({"version", "status", "payload_schema"})

Status = Literal["active", "deprecated"]
_Validator = Callable[..., Any]


# --------------------------------------------------------------------------- date-time


_RFC3339_RE: Final = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>0[1-9]|1[0-2])-(?P<day>[0-9]{2})"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])",
    re.IGNORECASE,
)


def _is_rfc3339_datetime(value: str) -> bool:
    """RFC 3339 ``date-time``, with real calendar days.

    fastjsonschema's built-in regex also accepts offsets without a colon (``+0200``),
    second 60 and year 0. This check agrees with the reference validator (``jsonschema``
    with ``rfc3339-validator``): those are refused, the day must exist in its month,
    and ``T`` and ``Z`` may be lower-case. Unlike a ``$``-anchored regex it does not
    accept a trailing newline.
    """
    match = _RFC3339_RE.fullmatch(value)
    if match is None:
        return False
    day = int(match["day"])
    if 1 <= day <= 28:  # every month has them: the usual case needs no calendar
        return match["year"] != "0000"
    year, month = int(match["year"]), int(match["month"])
    return year != 0 and 1 <= day <= calendar.monthrange(year, month)[1]


_FORMATS: Final[dict[str, Callable[[str], bool]]] = {"date-time": _is_rfc3339_datetime}

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

#: Formats fastjsonschema checks (its own regexes, or ours above). Any other ``format``
#: would be an annotation nobody enforces, so the registry refuses it.
_CHECKED_FORMATS: Final = frozenset(
    {
        "date",
        "date-time",
        "duration",
        "email",
        "hostname",
        "idn-email",
        "idn-hostname",
        "ipv4",
        "ipv6",
        "iri",
        "iri-reference",
        "json-pointer",
        "regex",
        "relative-json-pointer",
        "time",
        "uri",
        "uri-reference",
        "uri-template",
        "uuid",
    }
)


def _compile(schema: Mapping[str, Any]) -> _Validator:
    return fastjsonschema.compile(dict(schema), formats=_FORMATS, use_default=False)


# --------------------------------------------------------------------------- public records


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """One schema version of an event type, as listed in the registry.

    ``payload_schema`` is the schema's path relative to the contracts directory.
    """

    version: int
    status: Status
    payload_schema: str

    @property
    def deprecated(self) -> bool:
        """True when producers should move to a newer version."""
        return self.status == "deprecated"


@dataclass(frozen=True, slots=True)
class EventTypeEntry:
    """What the registry says about one event type.

    ``versions`` is sorted by version number; ``current_version`` is the one publish
    uses when the caller does not name a version.
    """

    event_type: str
    contract: str
    producer: str
    subscribers: tuple[str, ...]
    current_version: int
    versions: tuple[VersionEntry, ...]

    def version(self, version: int) -> VersionEntry:
        """The entry for ``version``; raises UnknownSchemaVersionError if there is none."""
        for item in self.versions:
            if item.version == version:
                return item
        raise UnknownSchemaVersionError(
            self.event_type, version, [item.version for item in self.versions]
        )


# --------------------------------------------------------------------------- the registry


class Registry:
    """Event types, their payload schemas and compiled validators.

    Build one with :meth:`load`; an instance is immutable and safe to share between
    tasks and threads. Every validator is compiled during ``load``, so validation never
    compiles anything.
    """

    __slots__ = (
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
        validators: dict[tuple[str, int], _Validator],
        envelope_validator: _Validator,
        envelope_schema: dict[str, Any] | None = None,
    ) -> None:
        """Wrap already checked parts; use :meth:`load` instead of calling this."""
        self._root = root
        self._entries = entries
        self._schemas = schemas
        self._validators = validators
        self._envelope_validator = envelope_validator
        self._envelope_schema = copy.deepcopy(envelope_schema or {})
        self._envelope_schema.pop("examples", None)
        self._narrowed: dict[tuple[str, ...], _Validator] = {}
        self._field_validators: dict[str, _Validator | None] = {}

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Registry:
        """Load and check a contracts directory.

        The directory is ``path`` if given, else the ``DISPATCH_AIO_CONTRACTS``
        environment variable (read now, on every call), else the copy bundled with the
        package. Every problem found is collected and reported together in one
        :class:`RegistryError`: registry shape, missing or unparsable files, schemas
        that do not compile, duplicate or missing versions, unknown statuses, examples
        that fail their own schema, and keywords fastjsonschema would ignore.
        """
        if path is not None:
            root = Path(path)
        elif env := os.environ.get(CONTRACTS_ENV_VAR):
            root = Path(env)
        else:
            root = bundled_contracts_dir()
        return _Loader(root).load()

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
            path, reason = _describe(exc, "$")
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
            path, reason = _describe(exc, "$.payload")
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

    def envelope_fields_validator(self, required: tuple[str, ...]) -> _Validator:
        """A validator of the envelope schema with ``required`` narrowed to these fields.

        Compiled from the schema read at :meth:`load` (never from disk again), once per
        registry and tuple of fields; for checking a few fields of many envelopes fast.
        """
        validator = self._narrowed.get(required)
        if validator is None:
            schema = copy.deepcopy(self._envelope_schema)
            schema["required"] = list(required)
            validator = self._narrowed[required] = _compile(schema)
        return validator

    def envelope_field_validator(self, name: str) -> _Validator | None:
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
            validator = _compile({**scope, **field})
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


_IDENTIFIER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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


def _member(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER_RE.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def _describe(exc: fastjsonschema.JsonSchemaValueException, root: str) -> tuple[str, str]:
    """JSON path and reason of a fastjsonschema failure.

    fastjsonschema names the failing value ``data.a.b[0]``; the path swaps ``data`` for
    ``root``. A missing required property or a property not allowed is pointed at
    directly (``$.payload.person_id``) instead of at the object holding it.
    """
    name = exc.name or "data"
    path = root + name[4:] if name.startswith("data") else root
    message = exc.message
    reason = message[len(name) + 1 :] if message.startswith(name + " ") else message
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    value = exc.value
    if exc.rule == "required" and isinstance(value, dict):
        missing = [key for key in definition.get("required", ()) if key not in value]
        if missing:
            return _member(path, str(missing[0])), "required property is missing"
    if exc.rule == "additionalProperties" and isinstance(value, dict):
        allowed = definition.get("properties", {})
        patterns = list(definition.get("patternProperties", {}))
        extra = [
            key
            for key in value
            if key not in allowed and not any(re.search(p, str(key)) for p in patterns)
        ]
        if extra:
            return _member(path, str(extra[0])), "property is not allowed by the schema"
    return path, reason


# --------------------------------------------------------------------------- loading


class _DuplicateKeysError(ValueError):
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(f"duplicate keys {keys}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    duplicates: list[str] = []
    for key, value in pairs:
        if key in result:
            duplicates.append(key)
        result[key] = value
    if duplicates:
        raise _DuplicateKeysError(duplicates)
    return result


def _pointer(parts: tuple[str | int, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts) or "/"


# Where subschemas sit, so that the walk never mistakes a property *named* like a
# keyword for the keyword.
_SUBSCHEMA: Final = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SUBSCHEMA_LIST: Final = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SUBSCHEMA_MAP: Final = frozenset(
    # "dependencies" maps to schemas or to property lists; walk() skips the lists.
    {"$defs", "definitions", "dependencies", "dependentSchemas", "patternProperties", "properties"}
)

#: Keywords fastjsonschema does not implement: it would skip them silently.
_IGNORED_BY_FASTJSONSCHEMA: Final[Mapping[str, str]] = {
    "prefixItems": "2020-12 tuple validation",
    "unevaluatedProperties": "2019-09/2020-12 keyword",
    "unevaluatedItems": "2019-09/2020-12 keyword",
    "dependentSchemas": "2019-09/2020-12 keyword",
    "dependentRequired": "2019-09/2020-12 keyword",
    "$dynamicRef": "2020-12 keyword",
    "$dynamicAnchor": "2020-12 keyword",
    "$recursiveRef": "2019-09 keyword",
    "$recursiveAnchor": "2019-09 keyword",
    "$anchor": "2019-09/2020-12 keyword",
    "$vocabulary": "meta-schema keyword",
    "minContains": "2019-09/2020-12 keyword",
    "maxContains": "2019-09/2020-12 keyword",
    "contentSchema": "2019-09/2020-12 keyword",
}
#: Keywords that 2020-12 dropped but fastjsonschema still enforces: the two validators
#: would disagree.
_DROPPED_IN_2020_12: Final[Mapping[str, str]] = {
    "additionalItems": "use items with prefixItems in 2020-12 (both unsupported here)",
    "dependencies": "split into dependentRequired/dependentSchemas in 2020-12",
}
#: Keywords that may sit next to ``$ref`` without changing validation.
_REF_SIBLINGS_OK: Final = frozenset(
    {
        "$ref",
        "$comment",
        "title",
        "description",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)


def _schema_problems(schema: Any, where: str) -> Iterator[tuple[str, bool]]:
    """Keywords in ``schema`` that fastjsonschema would not enforce as 2020-12 means them.

    Yields ``(problem, blocks_compile)``; a remote ``$ref`` blocks compilation because
    fastjsonschema would try to download it.
    """

    def walk(node: Any, at: tuple[str | int, ...]) -> Iterator[tuple[str, bool]]:
        if not isinstance(node, dict):
            return  # booleans are valid schemas; other types fail compilation
        for keyword in node:
            kw_at = (*at, keyword)
            if keyword in _IGNORED_BY_FASTJSONSCHEMA:
                yield (
                    f"{where}: {_pointer(kw_at)}: keyword {keyword!r} "
                    f"({_IGNORED_BY_FASTJSONSCHEMA[keyword]}) is not enforced by "
                    "fastjsonschema; express the rule with draft-7 keywords",
                    False,
                )
            elif keyword in _DROPPED_IN_2020_12:
                yield (
                    f"{where}: {_pointer(kw_at)}: keyword {keyword!r} is not part of "
                    f"JSON Schema 2020-12 ({_DROPPED_IN_2020_12[keyword]})",
                    False,
                )
        ref = node.get("$ref")
        if ref is not None:
            if not isinstance(ref, str) or not ref.startswith("#"):
                yield (
                    f"{where}: {_pointer((*at, '$ref'))}: keyword '$ref' must point inside "
                    f"the same file (got {ref!r}); remote references are not fetched",
                    True,
                )
            elif ref.startswith("#/$defs/") or ref == "#/$defs":
                yield (
                    f"{where}: {_pointer((*at, '$ref'))}: keyword '$ref' into '$defs' "
                    f"({ref!r}) is not supported; use '#/definitions/...'",
                    False,
                )
            siblings = sorted(k for k in node if k not in _REF_SIBLINGS_OK)
            if siblings:
                yield (
                    f"{where}: {_pointer((*at, '$ref'))}: keyword '$ref' has sibling "
                    f"keywords {siblings} that fastjsonschema ignores; wrap them in allOf",
                    False,
                )
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt not in _CHECKED_FORMATS:
            yield (
                f"{where}: {_pointer((*at, 'format'))}: keyword 'format' value {fmt!r} "
                "is not checked by fastjsonschema; use a pattern",
                False,
            )
        items = node.get("items")
        if isinstance(items, list):
            yield (
                f"{where}: {_pointer((*at, 'items'))}: keyword 'items' as an array is "
                "draft-7 tuple validation, not valid in 2020-12",
                False,
            )
            for index, sub in enumerate(items):
                yield from walk(sub, (*at, "items", index))
        for keyword, sub in node.items():
            if keyword in _SUBSCHEMA and not (keyword == "items" and isinstance(sub, list)):
                yield from walk(sub, (*at, keyword))
            elif keyword in _SUBSCHEMA_LIST and isinstance(sub, list):
                for index, item in enumerate(sub):
                    yield from walk(item, (*at, keyword, index))
            elif keyword in _SUBSCHEMA_MAP and isinstance(sub, dict):
                for name, item in sub.items():
                    yield from walk(item, (*at, keyword, name))

    yield from walk(schema, ())


class _Loader:
    """Reads one contracts directory and gathers every problem it has."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[str] = []

    def load(self) -> Registry:
        if not self.root.is_dir():
            raise RegistryError([f"contracts directory {str(self.root)!r} does not exist"])
        entries: dict[str, EventTypeEntry] = {}
        schemas: dict[tuple[str, int], dict[str, Any]] = {}
        validators: dict[tuple[str, int], _Validator] = {}

        envelope = self._schema_file(ENVELOPE_SCHEMA_PATH)
        envelope_validator = envelope[1] if envelope is not None else None

        registry = self._json_file(REGISTRY_FILENAME)
        if registry is not None:
            for event_type, raw in self._event_types(registry):
                entry, versions = self._entry(event_type, raw)
                if entry is not None:
                    entries[event_type] = entry
                for item in versions:
                    loaded = self._schema_file(item.payload_schema, payload=True)
                    if loaded is not None:
                        schemas[(event_type, item.version)] = loaded[0]
                        # Payloads are validated per event on publish and on read.
                        validators[(event_type, item.version)] = with_fast_path(
                            loaded[0], loaded[1], _FORMATS
                        )

        if self.problems or envelope_validator is None:
            raise RegistryError(self.problems)
        assert envelope is not None
        return Registry(self.root, entries, schemas, validators, envelope_validator, envelope[0])

    # -- files ---------------------------------------------------------------------------

    def _json_file(self, relative: str) -> Any:
        path = self.root / relative
        if not path.is_file():
            self.problems.append(f"{relative}: file not found in {str(self.root)!r}")
            return None
        try:
            return json.loads(
                path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys
            )
        except _DuplicateKeysError as exc:
            self.problems.append(f"{relative}: duplicate JSON object keys {exc.keys}")
        except (ValueError, UnicodeDecodeError) as exc:
            self.problems.append(f"{relative}: not valid JSON: {exc}")
        except OSError as exc:
            self.problems.append(f"{relative}: cannot be read: {exc}")
        return None

    def _schema_file(
        self, relative: str, *, payload: bool = False
    ) -> tuple[dict[str, Any], _Validator] | None:
        schema = self._json_file(relative)
        if schema is None:
            return None
        if not isinstance(schema, dict):
            self.problems.append(f"{relative}: a schema must be a JSON object")
            return None
        before = len(self.problems)
        if schema.get("$schema") not in _SCHEMA_URIS:
            self.problems.append(
                f"{relative}: '$schema' must be 'https://json-schema.org/draft/2020-12/schema'"
                f" (got {schema.get('$schema')!r})"
            )
        if schema.get("type") != "object":
            what = "payload" if payload else "envelope"
            self.problems.append(f'{relative}: the {what} schema must have "type": "object"')
        blocked = False
        for problem, blocks_compile in _schema_problems(schema, relative):
            self.problems.append(problem)
            blocked = blocked or blocks_compile
        if blocked:
            return None  # compiling would try to download the referenced schema
        try:
            validator = _compile(schema)
        except Exception as exc:  # any compile failure is a schema problem
            self.problems.append(f"{relative}: does not compile as a JSON Schema: {exc}")
            return None
        examples = schema.get("examples", [])
        if not isinstance(examples, list):
            self.problems.append(f"{relative}: 'examples' must be an array")
        else:
            for index, example in enumerate(examples):
                try:
                    validator(example)
                except fastjsonschema.JsonSchemaValueException as exc:
                    path, reason = _describe(exc, "$")
                    self.problems.append(
                        f"{relative}: /examples/{index} fails its own schema at {path}: {reason}"
                    )
        if len(self.problems) > before:
            return None
        return schema, validator

    # -- registry shape ------------------------------------------------------------------

    def _event_types(self, registry: Any) -> Iterator[tuple[str, Any]]:
        where = REGISTRY_FILENAME
        if not isinstance(registry, dict):
            self.problems.append(f"{where}: must be a JSON object")
            return
        extra = sorted(set(registry) - {"registry_version", "event_types"})
        if extra:
            self.problems.append(f"{where}: unknown top-level keys {extra}")
        if registry.get("registry_version") != 1 or isinstance(
            registry.get("registry_version"), bool
        ):
            self.problems.append(
                f"{where}: 'registry_version' must be 1 (got {registry.get('registry_version')!r})"
            )
        event_types = registry.get("event_types")
        if not isinstance(event_types, dict):
            self.problems.append(f"{where}: 'event_types' must be an object")
            return
        for event_type, raw in event_types.items():
            if not _EVENT_TYPE_RE.fullmatch(event_type):
                self.problems.append(
                    f"{where}: event type {event_type!r} is not dotted lower-case "
                    "(e.g. 'credit.locked')"
                )
                continue
            yield event_type, raw

    def _entry(self, event_type: str, raw: Any) -> tuple[EventTypeEntry | None, list[VersionEntry]]:
        """The entry (None when broken) and every well-formed version of it.

        The versions come back even when the entry is broken, so that their schema
        files are checked too and one load reports as much as possible.
        """
        where = f"{REGISTRY_FILENAME}: {event_type}"
        before = len(self.problems)
        if not isinstance(raw, dict):
            self.problems.append(f"{where}: must be an object")
            return None, []
        missing = sorted(_ENTRY_KEYS - raw.keys())
        if missing:
            self.problems.append(f"{where}: missing keys {missing}")
        extra = sorted(raw.keys() - _ENTRY_KEYS)
        if extra:
            self.problems.append(f"{where}: unknown keys {extra}")
        contract, producer = raw.get("contract"), raw.get("producer")
        if "contract" in raw and not (isinstance(contract, str) and _SLUG_RE.fullmatch(contract)):
            self.problems.append(f"{where}: 'contract' must be a lower-case slug")
        if "producer" in raw and not (isinstance(producer, str) and _SLUG_RE.fullmatch(producer)):
            self.problems.append(f"{where}: 'producer' must be a lower-case slug")
        subscribers = raw.get("subscribers")
        if "subscribers" in raw:
            if not isinstance(subscribers, list) or not all(
                isinstance(s, str) and _SLUG_RE.fullmatch(s) for s in subscribers
            ):
                self.problems.append(f"{where}: 'subscribers' must be a list of lower-case slugs")
            elif len(set(subscribers)) != len(subscribers):
                self.problems.append(f"{where}: 'subscribers' lists a subscriber twice")
        versions = self._versions(where, raw.get("versions")) if "versions" in raw else []
        current = raw.get("current_version")
        if "current_version" in raw:
            known = {v.version: v for v in versions}
            if not _is_version_number(current):
                self.problems.append(f"{where}: 'current_version' must be an integer >= 1")
            elif current not in known:
                self.problems.append(
                    f"{where}: current_version {current} is not among its versions {sorted(known)}"
                )
            elif known[current].status != "active":
                self.problems.append(f"{where}: current_version {current} is deprecated")
        if len(self.problems) > before:
            return None, versions
        entry = EventTypeEntry(
            event_type=event_type,
            contract=cast(str, contract),
            producer=cast(str, producer),
            subscribers=tuple(cast(list[str], subscribers)),
            current_version=cast(int, current),
            versions=tuple(sorted(versions, key=lambda v: v.version)),
        )
        return entry, versions

    def _versions(self, where: str, raw: Any) -> list[VersionEntry]:
        """The well-formed items of a ``versions`` list; problems go to ``self.problems``."""
        if not isinstance(raw, list) or not raw:
            self.problems.append(f"{where}: 'versions' must be a non-empty list")
            return []
        result: list[VersionEntry] = []
        seen: set[int] = set()
        for index, item in enumerate(raw):
            at = f"{where}: versions[{index}]"
            if not isinstance(item, dict):
                self.problems.append(f"{at}: must be an object")
                continue
            before = len(self.problems)
            missing = sorted(_VERSION_KEYS - item.keys())
            if missing:
                self.problems.append(f"{at}: missing keys {missing}")
            extra = sorted(item.keys() - _VERSION_KEYS)
            if extra:
                self.problems.append(f"{at}: unknown keys {extra}")
            version = item.get("version")
            status = item.get("status")
            schema = item.get("payload_schema")
            if "version" in item and not _is_version_number(version):
                self.problems.append(f"{at}: 'version' must be an integer >= 1")
            if "status" in item and status not in _STATUSES:
                self.problems.append(
                    f"{at}: 'status' must be 'active' or 'deprecated' (got {status!r})"
                )
            if "payload_schema" in item and not _relative_path_ok(schema):
                self.problems.append(
                    f"{at}: 'payload_schema' must be a relative path inside the contracts "
                    f"directory (got {schema!r})"
                )
            if len(self.problems) > before:
                continue
            number = cast(int, version)
            if number in seen:
                self.problems.append(f"{where}: duplicate version {number}")
                continue
            seen.add(number)
            result.append(VersionEntry(number, cast(Status, status), cast(str, schema)))
        return result


def _relative_path_ok(value: Any) -> bool:
    if not isinstance(value, str) or not value or "\\" in value:
        return False
    path = Path(value)
    return not path.is_absolute() and ".." not in path.parts


def _is_version_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
