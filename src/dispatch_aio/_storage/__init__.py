"""Storage: the driver boundary (failure classification, shielded commit/rollback/release,
error translation) and the consumer's named queries."""

from __future__ import annotations

from ._driver import (
    INFRASTRUCTURE_ERRORS,
    SERVER_FAILURES,
    Backoff,
    CommitTimeoutError,
    FailureKind,
    classify,
    commit,
    is_infrastructure,
    is_usable,
    keeps_connection,
    release,
    rollback,
    terminate,
)
from ._translate import CONNECTION_ERRORS, translate_errors

__all__ = [
    "CONNECTION_ERRORS",
    "INFRASTRUCTURE_ERRORS",
    "SERVER_FAILURES",
    "Backoff",
    "CommitTimeoutError",
    "FailureKind",
    "classify",
    "commit",
    "is_infrastructure",
    "is_usable",
    "keeps_connection",
    "release",
    "rollback",
    "terminate",
    "translate_errors",
]
