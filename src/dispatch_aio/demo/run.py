"""The demo run: start the consumers, produce, break and replay, check, summarise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from collections.abc import Sequence
from typing import TextIO

import asyncpg

from .._consumer import Consumer
from .._db import CONNECTION_ERRORS
from .._deadletters import DeadLetters
from .._delivery.signatures import generate_secret
from .._dispatcher import Dispatcher
from .._dsn import redact
from .._errors import DispatchError, UsageError
from .._identifiers import quote_ident
from .._ids import new_id
from .._migrate import migrate
from .._registry import Registry
from .consumers import _coaching_worker, _Observed, _warehouse
from .database import (
    _DOMAIN_TABLES,
    _PROJECTION_CHECK,
    _WAREHOUSE_CHECK,
    _connect,
    _Database,
    _database,
)
from .domain import (
    _COACHING_WORKERS,
    _PRODUCERS,
    _STALL_TIMEOUT,
    COACHING,
    COACHING_TYPES,
    EVENT_TYPES,
    EXPECTED_SLOT,
    OPERATOR,
    PRODUCER,
    TENANT_ID,
    WAREHOUSE,
)
from .output import _captured_library_logs, _ms, _percentile, _plural, _Progress
from .remote import (
    RECEIVER,
    Remote,
    abandon,
    delivery_available,
    remote_service,
    start_delivery,
)
from .revenue import _Revenue
from .summary import (
    ConsumerSummary,
    CrossServiceSummary,
    DeadLetterSummary,
    DemoSummary,
    WarehouseSummary,
)

# -- the run -------------------------------------------------------------------------


async def run_demo(
    dsn: str | None = None,
    *,
    events: int = 200,
    keep: bool = False,
    out: TextIO = sys.stdout,
    rate: float = 100.0,
    seed: int | None = None,
) -> DemoSummary:
    """Run the demo scenario, print progress and a summary to ``out``; return the figures.

    With no ``dsn``, starts an embedded PostgreSQL (``pip install dispatch-aio[embedded]``)
    and removes it at the end; with ``keep`` it is left running and its DSN printed.
    With a ``dsn``, works in a fresh schema ``dispatch_demo_<random>``, dropped at the
    end unless ``keep``. ``events`` is how many events Revenue commits; ``rate`` paces
    them (events per second; 0 for as fast as possible); ``seed`` makes the scenario's
    choices repeatable.

    Raises DatabaseUnavailableError when nothing answers at ``dsn``, ConfigurationError
    for an unusable DSN or missing PostgreSQL binaries, UsageError for bad arguments.
    """
    if isinstance(events, bool) or not isinstance(events, int) or events < 1:
        raise UsageError(f"events must be a positive integer, got {events!r}")
    if events > 100_000:
        raise UsageError(f"events must be at most 100000, got {events}")
    if rate < 0:
        raise UsageError(f"rate must be >= 0 events per second, got {rate}")
    progress = _Progress(out)
    progress.line(
        f"dispatch-aio demo: {events} credit-reservation events, Revenue -> {COACHING}, {WAREHOUSE}"
    )
    with _captured_library_logs() as records:
        async with _database(dsn, keep, progress) as db:
            summary = await _run(
                db,
                events=events,
                keep=keep,
                rate=rate,
                seed=seed,
                progress=progress,
                records=records,
            )
            _print_summary(summary, progress)
    return summary


async def _run(
    db: _Database,
    *,
    events: int,
    keep: bool,
    rate: float,
    seed: int | None,
    progress: _Progress,
    records: list[logging.LogRecord],
) -> DemoSummary:
    schema = db.schema
    qschema = quote_ident(schema)
    # Revenue's producers, Coaching's workers, the warehouse, the fan-out to Delivery.
    pool_size = _PRODUCERS + _COACHING_WORKERS * (4 + 2) + (4 + 2) + (4 + 2) + 2
    pool = await _connect(db.dsn, pool_size)
    created_schema = False
    # The second service starts (a process importing its web stack) while this one migrates.
    secret = generate_secret()
    starting = (
        asyncio.create_task(start_delivery(db.dsn, _remote_schema(schema), secret))
        if delivery_available()
        else None
    )
    try:
        server_version = str(await pool.fetchval("SHOW server_version"))
        where = "embedded PostgreSQL" if db.embedded else redact(db.dsn, db.dsn)
        progress.line(f"Database: {where} (PostgreSQL {server_version}), schema {schema}")
        if db.embedded is None:
            created_schema = True  # from here on, drop it at the end unless keep
        await migrate(pool, schema)
        await pool.execute(_DOMAIN_TABLES.format(schema=qschema))
        progress.line("Migrated; created Revenue's credit_reservation and Coaching's availability")
        summary = await _scenario(
            pool,
            db,
            events=events,
            rate=rate,
            seed=seed,
            progress=progress,
            server_version=server_version,
            keep=keep,
            records=records,
            starting=starting,
            secret=secret,
        )
    finally:
        if starting is not None:
            await abandon(starting)
        try:
            if created_schema and not keep:
                with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
                    await pool.execute(f"DROP SCHEMA IF EXISTS {qschema} CASCADE")
                    await pool.execute(
                        f"DROP SCHEMA IF EXISTS {quote_ident(_remote_schema(schema))} CASCADE"
                    )
        finally:
            await pool.close()
    return summary


def _remote_schema(schema: str) -> str:
    """The second service's schema: its own tables, as its own database would hold."""
    return "delivery" if schema == "public" else f"{schema}_delivery"


async def _scenario(
    pool: asyncpg.Pool,
    db: _Database,
    *,
    events: int,
    rate: float,
    seed: int | None,
    progress: _Progress,
    server_version: str,
    keep: bool,
    records: list[logging.LogRecord],
    starting: asyncio.Task[tuple[asyncio.subprocess.Process, str]] | None,
    secret: str,
) -> DemoSummary:
    schema = db.schema
    qschema = quote_ident(schema)
    registry = Registry.load()
    rng = random.Random(seed)
    dispatcher = Dispatcher(
        pool, producer=PRODUCER, tenant_id=TENANT_ID, registry=registry, schema=schema
    )
    revenue = _Revenue(pool, dispatcher, schema, events=events, rate=rate, rng=rng)
    observed = _Observed()
    coaching = [
        _coaching_worker(pool, schema, registry, observed) for _ in range(_COACHING_WORKERS)
    ]
    warehouse = _warehouse(pool, schema, registry, observed, revenue.poisoned)
    consumers = [*coaching, warehouse]
    dead_letters = DeadLetters(pool, schema)

    def status() -> str:
        handled = sum(c.stats.handled for c in coaching)
        w = warehouse.stats
        return (
            f"published {revenue.published}/{events} | {COACHING} {handled} handled, "
            f"{sum(c.stats.dedup_hits for c in coaching)} dedup hits | {WAREHOUSE} "
            f"{w.handled + w.replayed} handled, retries {w.retried}, "
            f"dead letters {w.dead_lettered}"
        )

    async def ticker() -> None:
        while True:
            progress.status(status())
            await asyncio.sleep(0.5)

    remote: Remote | None = None
    cross: CrossServiceSummary | None = None
    async with contextlib.AsyncExitStack() as stack:
        for consumer in consumers:
            await stack.enter_async_context(consumer)
        if starting is not None:
            remote = await stack.enter_async_context(
                remote_service(
                    pool, schema, await starting, _remote_schema(schema), secret, registry
                )
            )
            progress.line(
                f"Second service {RECEIVER} (its own process, schema {remote.schema}) takes "
                f"Revenue's events through its inbox at {remote.url} (signed fan-out)"
            )
        else:
            progress.line(
                "Cross-service delivery skipped: pip install 'dispatch-aio[delivery]' to see it"
            )
        progress.line(
            f"Consumers running: {COACHING} ({_COACHING_WORKERS} workers), {WAREHOUSE}; "
            f"Revenue publishing from {_PRODUCERS} tasks"
        )
        tick = asyncio.create_task(ticker())
        try:
            if remote is not None:
                # Forged requests arrive while the real ones flow.
                forging = asyncio.create_task(remote.forge(dispatcher, new_id("per")))
            await revenue.run()
            if remote is not None:
                await forging
            async with asyncio.timeout(_STALL_TIMEOUT):
                for consumer in consumers:
                    await consumer.wait_idle()
                if remote is not None:
                    await remote.wait_idle(revenue.published)
            progress.status(status(), force=True)
            progress.end_live()
            progress.line(
                f"Revenue committed {revenue.published} events "
                f"({_plural(len(revenue.rolled_back), 'transaction')} rolled back on purpose); "
                "consumers caught up"
            )
            letters = (await dead_letters.list(WAREHOUSE, limit=50)).items
            if letters:
                progress.line(f"{_plural(len(letters), 'dead letter')} in {WAREHOUSE}:")
                for letter in letters:
                    progress.line(
                        f"  {letter.dead_letter_id}  {letter.event_type}  "
                        f"{letter.attempts} attempts  {letter.error_type}"
                    )
                progress.line("Fixing the warehouse handler and replaying them ...")
                observed.warehouse_fixed = True
                for letter in letters:
                    await dead_letters.replay(letter.dead_letter_id, replayed_by=OPERATOR)
                async with asyncio.timeout(_STALL_TIMEOUT):
                    pending = {letter.dead_letter_id for letter in letters}
                    while pending:
                        for dead_letter_id in list(pending):
                            row = await dead_letters.get(dead_letter_id)
                            if row.replay_status != "pending":
                                pending.discard(dead_letter_id)
                        if pending:
                            await asyncio.sleep(0.05)
                    await warehouse.wait_idle()
            progress.status(status(), force=True)
            progress.end_live()
            if remote is not None:
                cross = await remote.stop_and_summarise(dict(revenue.by_type))
        except TimeoutError:
            raise DispatchError(
                f"the demo stalled: consumers were not done after {_STALL_TIMEOUT:.0f}s"
            ) from None
        finally:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
            progress.end_live()
    # Consumers are stopped: every figure below is final.
    # What the warehouse loaded is what committed (a load commits with its event's
    # outcome); the poisoned events had no load before the fix.
    loads_after_fix = {
        r["event_id"]: int(r["loads"])
        for r in await pool.fetch(
            f"SELECT event_id, loads FROM {qschema}.warehouse_load "
            "WHERE event_id = ANY($1::text[])",
            [letter.event_id for letter in letters],
        )
    }
    letter_summaries = []
    for letter in letters:
        row = await dead_letters.get(letter.dead_letter_id)
        letter_summaries.append(
            DeadLetterSummary(
                dead_letter_id=row.dead_letter_id,
                consumer=row.consumer,
                event_id=row.event_id,
                event_type=row.event_type,
                attempts=row.attempts,
                error=f"{row.error_type}: {row.error_message}",
                action="replayed",
                replay_status=row.replay_status,
                resolved_by=row.resolved_by,
                resolution_note=row.resolution_note,
                handled_after_fix=loads_after_fix.get(row.event_id, 0),
            )
        )
    published_by_type = {
        r["event_type"]: int(r["n"])
        for r in await pool.fetch(
            f"SELECT event_type, count(*) AS n FROM {qschema}.dispatcher_event "
            "WHERE producer = $1 GROUP BY event_type ORDER BY event_type",
            PRODUCER,
        )
    }
    total = sum(published_by_type.values())
    visible = int(
        await pool.fetchval(
            f"SELECT count(*) FROM {qschema}.dispatcher_event WHERE event_id = ANY($1::text[])",
            revenue.rolled_back,
        )
    )
    outbox_ok = (
        total == revenue.published == events
        and visible == 0
        and published_by_type == dict(revenue.by_type)
    )
    by_state = {
        r["state"]: int(r["n"])
        for r in await pool.fetch(
            f"SELECT state, count(*) AS n FROM {qschema}.credit_reservation "
            "GROUP BY state ORDER BY state"
        )
    }
    expected_slot = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in EXPECTED_SLOT.items())
    check = await pool.fetchrow(
        _PROJECTION_CHECK.format(schema=qschema, expected_slot=expected_slot)
    )
    projection_rows, mismatches = int(check["rows"]), int(check["mismatches"])
    warehouse_check = WarehouseSummary.of(
        await pool.fetch(_WAREHOUSE_CHECK.format(schema=qschema), PRODUCER)
    )

    def figures(name: str, workers: list[Consumer], types: Sequence[str]) -> ConsumerSummary:
        latencies = list(observed.latency_ms.get(name, {}).values())
        return ConsumerSummary(
            name=name,
            workers=len(workers),
            event_types=tuple(types),
            expected=sum(published_by_type.get(t, 0) for t in types),
            handled=sum(c.stats.handled for c in workers),
            replayed=sum(c.stats.replayed for c in workers),
            dedup_hits=sum(c.stats.dedup_hits for c in workers),
            retried=sum(c.stats.retried for c in workers),
            dead_lettered=sum(c.stats.dead_lettered for c in workers),
            latency_p50_ms=_percentile(latencies, 50),
            latency_p99_ms=_percentile(latencies, 99),
        )

    everything = [v for per in observed.latency_ms.values() for v in per.values()]
    embedded = db.embedded is not None
    return DemoSummary(
        embedded=embedded,
        kept=keep,
        dsn=db.dsn if keep and embedded else None,
        db_schema=schema,
        server_version=server_version,
        events_requested=events,
        events_published=total,
        published_by_type=published_by_type,
        transactions_rolled_back=len(revenue.rolled_back),
        rolled_back_events_visible=visible,
        reservations=sum(by_state.values()),
        reservations_by_state=by_state,
        consumers=(
            figures(COACHING, coaching, COACHING_TYPES),
            figures(WAREHOUSE, [warehouse], EVENT_TYPES),
        ),
        dead_letters=tuple(letter_summaries),
        latency_p50_ms=_percentile(everything, 50),
        latency_p99_ms=_percentile(everything, 99),
        projection_rows=projection_rows,
        projection_mismatches=mismatches,
        projection_ok=mismatches == 0 and projection_rows == sum(by_state.values()),
        warehouse=warehouse_check,
        outbox_ok=outbox_ok,
        library_warnings=len(records),
        unexpected_warnings=tuple(
            f"{r.levelname}: {r.getMessage()}"
            for r in records
            if getattr(r, "event_id", None) not in revenue.poisoned
            and not (cross is not None and r.getMessage().startswith(_FORGERY_REFUSED))
        ),
        duration_s=round(progress.elapsed(), 2),
        cross_service=cross,
    )


#: How the inbox logs a refused request: expected, for the forged ones.
_FORGERY_REFUSED = "inbox refused a request"


def _print_summary(summary: DemoSummary, progress: _Progress) -> None:
    def verdict(ok: bool) -> str:
        return "OK" if ok else "MISMATCH"

    line = progress.line
    line()
    line(f"Summary ({summary.duration_s:.1f}s)")
    types = ", ".join(f"{t} {n}" for t, n in summary.published_by_type.items())
    line(f"  Revenue published {summary.events_published} events: {types}")
    line(
        f"  {_plural(summary.transactions_rolled_back, 'transaction')} rolled back after publish: "
        f"{summary.rolled_back_events_visible} of their events visible "
        f"[{verdict(summary.outbox_ok)}]"
    )
    states = ", ".join(f"{s} {n}" for s, n in summary.reservations_by_state.items())
    line(f"  {summary.reservations} reservations: {states}")
    line()
    header = (
        f"  {'consumer':<20}{'workers':>8}{'expected':>10}{'handled':>9}{'replayed':>10}"
        f"{'dedup':>7}{'retries':>9}{'dead':>6}{'p50 ms':>9}{'p99 ms':>9}"
    )
    line(header)
    for c in summary.consumers:
        line(
            f"  {c.name:<20}{c.workers:>8}{c.expected:>10}{c.handled:>9}{c.replayed:>10}"
            f"{c.dedup_hits:>7}{c.retried:>9}{c.dead_lettered:>6}"
            f"{_ms(c.latency_p50_ms):>9}{_ms(c.latency_p99_ms):>9}  [{verdict(c.complete)}]"
        )
    line("  (dedup: events the other worker had already handled, skipped without effect)")
    line()
    if summary.dead_letters:
        line("  Dead letters:")
        for d in summary.dead_letters:
            line(f"    {d.dead_letter_id} {d.event_type} after {d.attempts} attempts: {d.error}")
            line(
                f"      {d.action} by {d.resolved_by or '-'} -> {d.replay_status or '-'}, "
                f"handled {d.handled_after_fix} time(s) after the fix "
                f"[{verdict(d.handled_after_fix == 1)}]"
            )
    else:
        line("  Dead letters: none (too few events to pick failing ones)")
    line(
        f"  End-to-end latency (occurred_at -> handler start): p50 "
        f"{_ms(summary.latency_p50_ms)} ms, p99 {_ms(summary.latency_p99_ms)} ms"
    )
    line(
        f"  Projection: {summary.projection_rows} availability rows vs "
        f"{summary.reservations} reservations, {summary.projection_mismatches} mismatches "
        f"[{verdict(summary.projection_ok)}]"
    )
    line(
        "  Warehouse: every committed event loaded exactly once, per-type counts match "
        f"[{verdict(summary.warehouse_ok)}]"
    )
    for problem in summary.warehouse.problems():
        line(f"    {problem}")
    x = summary.cross_service
    if x is not None:
        line(
            f"  Cross-service: {x.subscriber}'s inbox received {x.received} of {x.expected} "
            f"events, {x.received_more_than_once} more than once; its consumer handled "
            f"{x.handled}, {x.handled_more_than_once} more than once "
            f"[{verdict(x.exactly_once)}]"
        )
        line(
            f"  Forged requests refused: {x.refused} of {x.forged} (bad signatures, 401), "
            f"{x.forged_written} written [{verdict(x.forgeries_refused)}]"
        )
    expected = summary.library_warnings - len(summary.unexpected_warnings)
    if expected:
        line(
            f"  ({expected} expected library warnings about the failing events were "
            "logged; configure logging to see them)"
        )
    if summary.unexpected_warnings:
        line(f"  Other library warnings ({len(summary.unexpected_warnings)}):")
        for message in summary.unexpected_warnings[:10]:
            line(f"    {message[:200]}")
    line("All checks passed." if summary.ok else "Some checks FAILED: see above.")
