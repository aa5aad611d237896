"""Kept so that ``from ._db import translate_errors`` goes on working: see ``_storage``."""

from __future__ import annotations

from ._storage import CONNECTION_ERRORS, translate_errors

__all__ = ["CONNECTION_ERRORS", "translate_errors"]
