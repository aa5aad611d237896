"""What a demo run reports: per consumer, per dead letter, and in total."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

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
    #: How many of the handler's runs for this event after the fix committed a load
    #: (read from the warehouse's table; 1 is right).
    handled_after_fix: int


class WarehouseSummary(BaseModel):
    """The warehouse's check, from the loads that committed: each committed event once.

    Loads are rows the handler wrote through its connection: they commit with the
    event's outcome, so a rolled-back attempt (its group failed, a replay finished by
    another run first) is not a load. Counting handler runs instead counts attempts,
    which the consumer delivers at least once, not exactly once.
    """

    model_config = ConfigDict(frozen=True)

    #: Revenue's committed events per type, and the warehouse's committed loads per type
    #: (an event loaded twice counts twice).
    published_by_type: dict[str, int]
    loaded_by_type: dict[str, int]
    #: Committed events with no committed load (at most ``_LISTED`` ids, then ``...``).
    missing: tuple[str, ...]
    missing_count: int
    #: Events whose load committed more than once -> how many times.
    loaded_more_than_once: dict[str, int]
    #: Loads of events that Revenue did not commit.
    not_published: tuple[str, ...]

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> WarehouseSummary:
        """The check from one row per event: ``event_type``, ``published`` (its id, or
        None when Revenue did not commit it), ``loaded`` (its id, or None when it has no
        load) and ``loads``."""
        published: dict[str, int] = {}
        loaded: dict[str, int] = {}
        missing: list[str] = []
        repeated: dict[str, int] = {}
        not_published: list[str] = []
        for row in rows:
            event_type, loads = row["event_type"], row["loads"] or 0
            if row["published"] is not None:
                published[event_type] = published.get(event_type, 0) + 1
                if row["loaded"] is None:
                    missing.append(row["published"])
            elif row["loaded"] is not None:
                not_published.append(row["loaded"])
            if row["loaded"] is not None:
                loaded[event_type] = loaded.get(event_type, 0) + loads
                if loads != 1:
                    repeated[row["loaded"]] = loads
        return cls(
            published_by_type=dict(sorted(published.items())),
            loaded_by_type=dict(sorted(loaded.items())),
            missing=tuple(sorted(missing)[:_LISTED]),
            missing_count=len(missing),
            loaded_more_than_once=dict(sorted(repeated.items())[:_LISTED]),
            not_published=tuple(sorted(not_published)[:_LISTED]),
        )

    @property
    def ok(self) -> bool:
        """Every committed event loaded exactly once, and nothing else loaded."""
        return not self.problems()

    def problems(self) -> tuple[str, ...]:
        """What the check found wrong, a line each; empty when it passed."""
        found: list[str] = []
        if self.loaded_by_type != self.published_by_type:
            types = sorted(self.published_by_type.keys() | self.loaded_by_type.keys())
            found.append(
                "loads per type differ from the committed events: "
                + ", ".join(
                    f"{t} {self.loaded_by_type.get(t, 0)} loaded of "
                    f"{self.published_by_type.get(t, 0)}"
                    for t in types
                    if self.loaded_by_type.get(t, 0) != self.published_by_type.get(t, 0)
                )
            )
        if self.missing_count:
            more = ", ..." if self.missing_count > len(self.missing) else ""
            found.append(
                f"{self.missing_count} committed event(s) never loaded: "
                f"{', '.join(self.missing)}{more}"
            )
        if self.loaded_more_than_once:
            found.append(
                "loaded more than once: "
                + ", ".join(f"{e} {n} times" for e, n in self.loaded_more_than_once.items())
            )
        if self.not_published:
            found.append(f"loaded but never committed: {', '.join(self.not_published)}")
        return tuple(found)


#: Event ids listed per problem (the counts say how many there are).
_LISTED = 10


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
    #: The warehouse's committed loads against the committed events.
    warehouse: WarehouseSummary
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
    def warehouse_ok(self) -> bool:
        """The warehouse loaded every committed event exactly once (see ``warehouse``)."""
        return self.warehouse.ok

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
