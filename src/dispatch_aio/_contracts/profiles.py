"""The id profiles a contracts directory's envelope can be made with. Pure and light.

Apart from the scaffold so that the command line's parser offers them without importing
the scaffold (and pydantic with it).
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ["ID_PROFILES", "IdProfile"]

#: Formats of subject, tenant and actor: prefixed UUIDv7 ids, or any non-empty string.
IdProfile = Literal["uuid7", "plain"]
ID_PROFILES: Final[tuple[str, ...]] = get_args(IdProfile)
