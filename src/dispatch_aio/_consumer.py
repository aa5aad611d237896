"""Kept so that ``from ._consumer import Consumer`` goes on working: see ``_consume``."""

from __future__ import annotations

from ._consume import Consumer, ConsumerState, ConsumerStats

__all__ = ["Consumer", "ConsumerState", "ConsumerStats"]
