"""Operator actions that change state (the read-only ones live in ``_status``)."""
