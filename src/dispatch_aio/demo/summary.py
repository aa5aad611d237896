"""What a demo run reports: per consumer, per dead letter, and in total."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# -- the summary ---------------------------------------------------------------------


class ConsumerSummary(BaseModel):
    """What one consumer (all its workers together) did during the demo."""

    model_config = ConfigDict(frozen=True)

    name: str
    workers: int
    event_types: tuple[str, ...]
    #: Committed events of the types it subscribes to.
    expected: int
    #: Handled on delivery (summed over workers; a dedup hit is not counted).
    handled: int
    #: Handled again from a dead letter after the fix.
    replayed: int
    dedup_hits: int
    retried: int
    dead_lettered: int
    #: End-to-end latency, from the event's ``occurred_at`` (set at publish, before the
    #: producer's commit) to the first start of a handler for it.
    latency_p50_ms: float | None
    latency_p99_ms: float | None

    @property
    def complete(self) -> bool:
        """Every expected event was handled once, on delivery or by replay."""
        return self.handled + self.replayed == self.expected


class DeadLetterSummary(BaseModel):
    """One dead letter of the demo and what became of it."""

    model_config = ConfigDict(frozen=True)

    dead_letter_id: str
    consumer: str
    event_id: str
    event_type: str
    attempts: int
    error: str
    action: Literal["replayed", "resolved"]
    replay_status: str | None
    resolved_by: str | None
    resolution_note: str | None
    #: How many times the handler succeeded for this event after the fix (1 is right).
    handled_after_fix: int


class CrossServiceSummary(BaseModel):
    """What the second service received through its inbox, and what it refused."""

    model_config = ConfigDict(frozen=True)

    subscriber: str
    schema_name: str
    #: Committed events of the types the subscriber takes.
    expected: int
    #: Rows in the receiver's event table, and how many event ids appear more than once.
    received: int
    received_more_than_once: int
    #: Events the receiver's own consumer handled, and how many more than once.
    handled: int
    handled_more_than_once: int
    #: Forged requests sent to the inbox, how many got 401, and rows they wrote (0).
    forged: int
    refused: int
    forged_written: int
    #: How the second service's process ended after SIGTERM (0: drained cleanly).
    service_exit_code: int = 0

    @property
    def exactly_once(self) -> bool:
        """Every event received, and handled by the receiver, exactly once."""
        return (
            self.received == self.handled == self.expected
            and self.received_more_than_once == self.handled_more_than_once == 0
        )

    @property
    def forgeries_refused(self) -> bool:
        """Every forged request refused, none written."""
        return self.refused == self.forged and self.forged_written == 0

    @property
    def ok(self) -> bool:
        """Both checks of the second service, and its clean exit."""
        return self.exactly_once and self.forgeries_refused and self.service_exit_code == 0


class DemoSummary(BaseModel):
    """Every figure the demo prints, and the checks it made."""

    model_config = ConfigDict(frozen=True)

    embedded: bool
    kept: bool
    #: The database's DSN when it was kept running (embedded PostgreSQL), else None.
    dsn: str | None
    db_schema: str
    server_version: str
    events_requested: int
    events_published: int
    published_by_type: dict[str, int]
    transactions_rolled_back: int
    #: Events of rolled-back transactions found in the event table (0 is right).
    rolled_back_events_visible: int
    reservations: int
    reservations_by_state: dict[str, int]
    consumers: tuple[ConsumerSummary, ...]
    dead_letters: tuple[DeadLetterSummary, ...]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    projection_rows: int
    projection_mismatches: int
    projection_ok: bool
    #: The warehouse saw every committed event exactly once, per-type counts included.
    warehouse_ok: bool
    #: The event table holds exactly the committed events and none of the rolled back.
    outbox_ok: bool
    #: Warnings and errors the library logged while no logging was configured: the
    #: expected ones (retries and dead letters of the failing events) are only counted.
    library_warnings: int
    #: The messages of any others; none is right.
    unexpected_warnings: tuple[str, ...]
    #: From the call to the summary, embedded server start included.
    duration_s: float
    #: The second service fed through its inbox; None when the [delivery] extra is absent.
    cross_service: CrossServiceSummary | None = None

    @property
    def ok(self) -> bool:
        """All checks passed."""
        return (
            self.projection_ok
            and self.warehouse_ok
            and self.outbox_ok
            and all(c.complete for c in self.consumers)
            and all(d.handled_after_fix == 1 for d in self.dead_letters)
            and (self.cross_service is None or self.cross_service.ok)
        )
