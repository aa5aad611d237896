"""Make your own contracts directory: an envelope, an empty registry, then event types.

:func:`init_contracts` writes the envelope schema and an empty registry;
:func:`add_event_type` writes a payload schema (a skeleton, or generated from a pydantic
model) and its registry entry. Both check every name first and write all their files or
none: files are staged next to their targets, moved into place, then the directory is
loaded as :meth:`Registry.load` would; any failure puts the previous files back.

Two id profiles for the envelope:

``uuid7``  the bundled envelope as it is: ``subject`` is a prefixed UUIDv7
           (``per_<uuid7>``), ``tenant_id`` is ``tnt_<slug>``, ``actor`` is ``kind:id``.
``plain``  ``subject``, ``tenant_id`` and ``actor`` are any non-empty strings of at most
           200 characters (``"42"``, ``"acme"``, ``"checkout"``).

The envelope is yours to edit afterwards; loosening or tightening a pattern is supported.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from .._errors import RegistryError, ScaffoldError
from .._registry import ENVELOPE_SCHEMA_PATH, REGISTRY_FILENAME, Registry
from .._resources import bundled_contracts_dir
from .models import payload_schema_from_model
from .profiles import ID_PROFILES, IdProfile

__all__ = ["ID_PROFILES", "IdProfile", "add_event_type", "envelope_schema", "init_contracts"]

# The registry's own rules (see _registry), repeated here to refuse a name before writing.
_EVENT_TYPE_RE: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_SLUG_RE: Final = re.compile(r"^[a-z][a-z0-9]*([_-][a-z0-9]+)*$")
_MAX_EVENT_TYPE: Final = 128  # the envelope's maxLength of event_type
_PLAIN_FIELDS: Final = {
    "subject": "The entity the event is about: any non-empty string (an order number, "
    "a user id). Consumers handle events of one subject in commit order.",
    "tenant_id": "Tenant the event belongs to: any non-empty string.",
    "actor": "Who caused the event: any non-empty string (system:checkout, user:42).",
}


def envelope_schema(id_profile: IdProfile = "uuid7") -> dict[str, Any]:
    """The envelope schema of ``id_profile`` as a dict (the bundled one, maybe loosened)."""
    _check_profile(id_profile)
    bundled = bundled_contracts_dir() / ENVELOPE_SCHEMA_PATH
    schema: dict[str, Any] = json.loads(bundled.read_text(encoding="utf-8"))
    schema.pop("$id", None)  # names the bundled copy; a project gives its own if it wants
    schema["title"] = f"event envelope v1 (id profile: {id_profile})"
    if id_profile == "plain":
        for name, description in _PLAIN_FIELDS.items():
            schema["properties"][name] = {
                "type": "string",
                "description": description,
                "minLength": 1,
                "maxLength": 200,
            }
        for example in schema.get("examples", []):
            example.update(subject="42", tenant_id="acme", actor="system:checkout")
    return schema


def init_contracts(directory: str | os.PathLike[str], *, id_profile: IdProfile = "uuid7") -> Path:
    """Create a contracts directory: the envelope schema and an empty registry.

    ``directory`` may exist (a project folder) but must not hold a registry or envelope
    yet. Returns the directory. Raises ScaffoldError, having written nothing.
    """
    _check_profile(id_profile)
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"{str(root)!r} exists and is not a directory")
    for relative in (REGISTRY_FILENAME, ENVELOPE_SCHEMA_PATH):
        if (root / relative).exists():
            raise ScaffoldError(
                f"{str(root)!r} already holds {relative}: it is a contracts directory; "
                "add event types to it with add_event_type"
            )
    files = {
        root / ENVELOPE_SCHEMA_PATH: _dump(envelope_schema(id_profile)),
        root / REGISTRY_FILENAME: _dump({"registry_version": 1, "event_types": {}}),
    }
    _write_all(files, verify=lambda: Registry.load(root))
    return root


def add_event_type(
    directory: str | os.PathLike[str],
    event_type: str,
    *,
    producer: str,
    version: int = 1,
    contract: str | None = None,
    subscribers: Iterable[str] = (),
    model: type[BaseModel] | None = None,
) -> Path:
    """Add ``event_type`` at ``version``: a payload schema file and its registry entry.

    The schema is a skeleton to fill in, or generated from ``model`` (a pydantic model).
    ``contract`` (the folder the schema goes in) defaults to the event type's first
    segment. Adding a version to a registered type needs the same producer; the newest
    version becomes the current one. Returns the schema file's path. Raises ScaffoldError
    for bad names, a version that exists, a directory that is not a healthy contracts
    directory, or a generated schema the registry refuses; nothing is written then.
    """
    root = Path(directory)
    _check_names(event_type, producer, version)
    contract = contract if contract is not None else event_type.split(".", 1)[0].replace("_", "-")
    if not _SLUG_RE.match(contract):
        raise ScaffoldError(
            f"contract {contract!r} is not a lower-case slug (letters, digits, '-' or '_' "
            "between them): pass contract='...'"
        )
    subscribers = list(subscribers)
    bad = [s for s in subscribers if not isinstance(s, str) or not _SLUG_RE.match(s)]
    if bad or len(set(subscribers)) != len(subscribers):
        raise ScaffoldError(f"subscribers must be distinct lower-case slugs, got {subscribers!r}")
    registry_path = root / REGISTRY_FILENAME
    if not registry_path.is_file():
        raise ScaffoldError(
            f"no {REGISTRY_FILENAME} in {str(root)!r}: create the directory with "
            "init_contracts first"
        )
    try:
        Registry.load(root)
    except RegistryError as exc:
        raise ScaffoldError(
            f"{str(root)!r} has problems to fix before adding to it:\n{exc}"
        ) from exc
    document = json.loads(registry_path.read_text(encoding="utf-8"))
    entries: dict[str, Any] = document["event_types"]
    relative = f"{contract}/schema/payloads/{event_type}-v{version}.json"
    item = {"version": version, "status": "active", "payload_schema": relative}
    entry = entries.get(event_type)
    if entry is None:
        entries[event_type] = {
            "contract": contract,
            "producer": producer,
            "subscribers": subscribers,
            "current_version": version,
            "versions": [item],
        }
    else:
        if any(v["version"] == version for v in entry["versions"]):
            raise ScaffoldError(f"{event_type} already has version {version} in {registry_path}")
        if entry["producer"] != producer:
            raise ScaffoldError(
                f"{event_type} is produced by {entry['producer']!r}, not {producer!r}"
            )
        entry["versions"] = sorted([*entry["versions"], item], key=lambda v: v["version"])
        entry["current_version"] = max(entry["current_version"], version)
    if (root / relative).exists():
        raise ScaffoldError(f"{relative} already exists in {str(root)!r}; remove it or rename")
    schema = (
        payload_schema_from_model(model, title=f"{event_type} v{version}")
        if model is not None
        else _skeleton(event_type, version)
    )
    document["event_types"] = dict(sorted(entries.items()))
    files = {root / relative: _dump(schema), registry_path: _dump(document)}
    _write_all(files, verify=lambda: Registry.load(root))
    return root / relative


# --------------------------------------------------------------------------- helpers


def _check_profile(id_profile: str) -> None:
    if id_profile not in ID_PROFILES:
        raise ScaffoldError(
            f"unknown id profile {id_profile!r}: choose {' or '.join(map(repr, ID_PROFILES))}"
        )


def _check_names(event_type: Any, producer: Any, version: Any) -> None:
    if not isinstance(event_type, str) or not _EVENT_TYPE_RE.match(event_type):
        raise ScaffoldError(
            f"event type {event_type!r} is not two or more dot-separated lower-case "
            "segments (e.g. 'order.placed')"
        )
    if len(event_type) > _MAX_EVENT_TYPE:
        raise ScaffoldError(f"event type {event_type!r} is longer than {_MAX_EVENT_TYPE}")
    if not isinstance(producer, str) or not _SLUG_RE.match(producer):
        raise ScaffoldError(
            f"producer {producer!r} is not a lower-case slug (e.g. 'checkout', 'order-service')"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ScaffoldError(f"version must be an integer >= 1, got {version!r}")


def _skeleton(event_type: str, version: int) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{event_type} v{version}",
        "description": (
            f"The payload of {event_type}, version {version}. List its fields under "
            "properties, and the ones every event carries under required."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": [],
        "properties": {},
    }


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(copy.deepcopy(dict(value)), indent=2, ensure_ascii=False) + "\n"


def _write_all(files: Mapping[Path, str], *, verify: Callable[[], object]) -> None:
    """Write every file or none; ``verify`` runs once all are in place.

    Each file is staged next to its target and moved over it (one rename); when a move
    or ``verify`` fails, the previous contents come back and new folders are removed.
    """
    previous: dict[Path, bytes | None] = {
        path: path.read_bytes() if path.exists() else None for path in files
    }
    created: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for path, text in files.items():
            missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
            for folder in reversed(missing):
                folder.mkdir()
                created.append(folder)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(text, encoding="utf-8")
            staged.append((temporary, path))
        for temporary, path in staged:
            os.replace(temporary, path)
            placed.append(path)
        verify()
    except BaseException as exc:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        for path in placed:
            before = previous[path]
            if before is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(before)
        for folder in reversed(created):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(exc, RegistryError):
            raise ScaffoldError(f"nothing written: the result would not load:\n{exc}") from exc
        if isinstance(exc, OSError):
            raise ScaffoldError(f"nothing written: {exc}") from exc
        raise
