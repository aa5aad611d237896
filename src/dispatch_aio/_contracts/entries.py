"""The public records of a registry: an event type's entry and its schema versions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .._errors import UnknownSchemaVersionError

__all__ = ["EventTypeEntry", "Status", "VersionEntry"]

#: Status of a schema version in the registry.
Status = Literal["active", "deprecated"]


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
