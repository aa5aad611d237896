"""Reading one contracts directory: every file, every schema, every problem at once.

:func:`load_contracts` checks the registry's shape, every referenced file and every
schema, and compiles one validator per schema. Problems are gathered, not raised one
by one, so a single :class:`~dispatch_aio.RegistryError` lists them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple, cast

import fastjsonschema

from .._errors import RegistryError
from .entries import EventTypeEntry, Status, VersionEntry
from .fastcheck import with_fast_path
from .schema_rules import FORMATS, Validator, compile_schema, describe, schema_problems

__all__ = [
    "ENVELOPE_SCHEMA_PATH",
    "REGISTRY_FILENAME",
    "Contracts",
    "contracts_fingerprint",
    "load_contracts",
]

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


class Contracts(NamedTuple):
    """The checked parts of a contracts directory, ready for :class:`Registry`."""

    entries: dict[str, EventTypeEntry]
    schemas: dict[tuple[str, int], dict[str, Any]]
    validators: dict[tuple[str, int], Validator]
    envelope_validator: Validator
    envelope_schema: dict[str, Any]


def load_contracts(root: Path) -> Contracts:
    """Read and check the contracts directory ``root``; RegistryError lists every problem."""
    return _Loader(root).load()


def contracts_fingerprint(root: Path) -> bytes | None:
    """A digest of every file under ``root``, by relative path and content; None when
    ``root`` is not a directory or a file cannot be read.

    What loading reads is all under ``root`` (relative paths, no ``..``), so two loads of
    a directory with the same fingerprint give the same contracts. Reading and hashing
    a directory of contracts takes a small fraction of parsing and compiling them.
    """
    digest = hashlib.blake2b(digest_size=16)
    try:
        if not root.is_dir():
            return None
        for path in sorted(_files_under(root)):
            name = path.relative_to(root).as_posix().encode()
            content = path.read_bytes()
            digest.update(len(name).to_bytes(8, "big") + name)
            digest.update(len(content).to_bytes(8, "big") + content)
    except OSError:
        return None
    return digest.digest()


def _files_under(root: Path) -> Iterator[Path]:
    """Every file under ``root``, through symbolic links (loading follows them too), each
    directory once: a link back up the tree is not walked again."""
    seen: set[tuple[int, int]] = set()
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:
            subdirectories.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        for name in files:
            path = Path(directory, name)
            if path.is_file():
                yield path


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


class _Loader:
    """Reads one contracts directory and gathers every problem it has."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[str] = []

    def load(self) -> Contracts:
        if not self.root.is_dir():
            raise RegistryError([f"contracts directory {str(self.root)!r} does not exist"])
        entries: dict[str, EventTypeEntry] = {}
        schemas: dict[tuple[str, int], dict[str, Any]] = {}
        validators: dict[tuple[str, int], Validator] = {}

        envelope = self._schema_file(ENVELOPE_SCHEMA_PATH)
        # Every event's envelope is checked on publish and at the inbox.
        envelope_validator = (
            with_fast_path(envelope[0], envelope[1], FORMATS) if envelope is not None else None
        )

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
                            loaded[0], loaded[1], FORMATS
                        )

        if self.problems or envelope_validator is None:
            raise RegistryError(self.problems)
        assert envelope is not None
        return Contracts(entries, schemas, validators, envelope_validator, envelope[0])

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
    ) -> tuple[dict[str, Any], Validator] | None:
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
        for problem, blocks_compile in schema_problems(schema, relative):
            self.problems.append(problem)
            blocked = blocked or blocks_compile
        if blocked:
            return None  # compiling would try to download the referenced schema
        try:
            validator = compile_schema(schema)
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
                    path, reason = describe(exc, "$")
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
        self._keys(where, raw, _ENTRY_KEYS)
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

    def _keys(self, where: str, found: dict[str, Any], expected: frozenset[str]) -> None:
        """Report the keys of ``expected`` missing from ``found`` and those it has beyond."""
        missing = sorted(expected - found.keys())
        if missing:
            self.problems.append(f"{where}: missing keys {missing}")
        extra = sorted(found.keys() - expected)
        if extra:
            self.problems.append(f"{where}: unknown keys {extra}")

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
            self._keys(at, item, _VERSION_KEYS)
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
