"""Delivery that other transactions cannot hold back, and the steady-state tail.

    python benchmarks/horizon.py            # full sizes
    python benchmarks/horizon.py --quick    # small sizes: a smoke run, figures meaningless

(i)   an unrelated write transaction stays open for the whole run while 300 events are
      published at 50/s: how many reach the handler while it is open, and their
      commit-to-handler p50/p99 (goal: all, p99 <= 50 ms);
(ii)  a slow neighbour: a second consumer of the same events whose handler holds its
      connection, in a transaction that wrote, for 1 s per event; the first consumer's
      p50/p99 at 50/s (goal: p99 <= 50 ms);
(iii) steady state at 100/s: dispatch-aio's p50/p99 against PgQueuer's, in the same run
      and on the same server (goals: both <= PgQueuer's).

One embedded PostgreSQL with fsync on (benchmarks/_common.py), the standard asyncio
loop, each producer commit timed just before COMMIT is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import _common as common
import asyncpg
import consume

from dispatch_aio import Consumer, Event

EVENT_TYPE = "credit.locked"


@dataclass(frozen=True)
class Sizes:
    unrelated_events: int
    unrelated_rate: int
    neighbour_seconds: float
    neighbour_rate: int
    steady_seconds: float
    steady_rate: int
    grace: float  # seconds to wait for stragglers before counting


FULL = Sizes(300, 50, 10.0, 50, 10.0, 100, 5.0)
QUICK = Sizes(60, 50, 3.0, 50, 2.0, 100, 2.0)


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> str:
    if not values:
        return "p50      -   p99      -"
    return f"p50 {common.percentile(values, 50):6.1f}   p99 {common.percentile(values, 99):6.1f} ms"


class Producer:
    """Publishes one event per transaction on its own connection; records commit times."""

    def __init__(self, conn: asyncpg.Connection, payload: dict[str, Any]) -> None:
        self.conn = conn
        self.payload = payload
        self.publisher = common.dispatcher(None)
        self.subject_ids = common.subjects(50)
        self.count = 0

    async def __call__(self) -> tuple[str, float]:
        self.count += 1
        transaction = self.conn.transaction()
        await transaction.start()
        envelope = await self.publisher.publish(
            EVENT_TYPE,
            self.payload,
            subject=self.subject_ids[self.count % len(self.subject_ids)],
            actor=common.ACTOR,
            conn=self.conn,
        )
        committing = time.perf_counter()
        await transaction.commit()
        return envelope.event_id, committing


def recording_consumer(pool: asyncpg.Pool, name: str, started: dict[str, float]) -> Consumer:
    consumer = Consumer(pool, name=name)

    @consumer.on(EVENT_TYPE)
    async def on_event(event: Event) -> None:
        started.setdefault(event.event_id, time.perf_counter())

    return consumer


async def delivered_within(
    sent: dict[str, float], started: dict[str, float], grace: float
) -> list[float]:
    """Latencies (ms) of the events that reached the handler within ``grace`` seconds."""
    with contextlib.suppress(TimeoutError):
        await common.wait_until(lambda: set(sent) <= set(started), within=grace, interval=0.01)
    return [(started[k] - sent[k]) * 1000.0 for k in sent if k in started]


async def unrelated_transaction(
    dsn: str, sizes: Sizes, payload: dict[str, Any]
) -> tuple[str, bool]:
    pool = await common.open_pool(dsn, 20)
    holder = await asyncpg.connect(dsn)
    producer_conn = await asyncpg.connect(dsn)
    started: dict[str, float] = {}
    consumer = recording_consumer(pool, "unrelated", started)
    try:
        await holder.execute("CREATE TABLE IF NOT EXISTS unrelated (id int)")
        async with consumer:
            await consumer.wait_idle()
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("INSERT INTO unrelated VALUES (1)")  # holds an xid
            sent = await consume.paced(
                sizes.unrelated_events, sizes.unrelated_rate, Producer(producer_conn, payload)
            )
            while_open = await delivered_within(sent, started, sizes.grace)
            await transaction.commit()
            after = await delivered_within(sent, started, 30.0)
    finally:
        await producer_conn.close()
        await holder.close()
        await pool.close()
    return (
        f"delivered while it was open: {len(while_open)} of {len(sent)}   "
        f"{summary(while_open)}\n"
        f"delivered once it ended:     {len(after)} of {len(sent)}"
    ), len(while_open) == len(sent) and bool(while_open) and (
        common.percentile(while_open, 99) <= 50.0
    )


async def slow_neighbour(dsn: str, sizes: Sizes, payload: dict[str, Any]) -> tuple[str, bool]:
    pool = await common.open_pool(dsn, 20)
    neighbour_pool = await common.open_pool(dsn, 6)
    producer_conn = await asyncpg.connect(dsn)
    started: dict[str, float] = {}
    consumer = recording_consumer(pool, "first", started)
    neighbour = Consumer(neighbour_pool, name="neighbour", concurrency=4)

    @neighbour.on(EVENT_TYPE)
    async def hold(event: Event, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO neighbour_effects VALUES ($1)", event.event_id)
        await asyncio.sleep(1.0)  # its transaction, with an xid, stays open meanwhile

    try:
        await pool.execute("CREATE TABLE IF NOT EXISTS neighbour_effects (event_id text)")
        async with consumer, neighbour:
            await consumer.wait_idle()
            count = int(sizes.neighbour_rate * sizes.neighbour_seconds)
            sent = await consume.paced(
                count, sizes.neighbour_rate, Producer(producer_conn, payload)
            )
            got = await delivered_within(sent, started, sizes.grace)
            neighbour.abort()
    finally:
        await producer_conn.close()
        await pool.close()
        await neighbour_pool.close()
    text = f"first consumer: {len(got)} of {len(sent)} delivered   {summary(got)}"
    return text, len(got) == len(sent) and bool(got) and common.percentile(got, 99) <= 50.0


async def run(sizes: Sizes, quick: bool) -> int:
    server = common.BenchServer.start()
    try:
        factory = common.PayloadFactory()
        _, encoded = factory.make(EVENT_TYPE, common.subjects(1)[0])
        payload = json.loads(encoded)
        print("== settings ==")
        print(common.machine_summary())
        print(f"server {await server.server_version()}, fsync on")
        goals: list[tuple[str, bool]] = []

        log("(i) unrelated open transaction")
        dsn = await server.create_database("horizon_unrelated")
        text, ok = await unrelated_transaction(dsn, sizes, payload)
        print()
        print(f"== (i) an unrelated write transaction open, {sizes.unrelated_rate}/s ==")
        print(text)
        goals.append(("(i) all delivered while it is open, p99 <= 50 ms", ok))

        log("(ii) slow neighbour")
        dsn = await server.create_database("horizon_neighbour")
        text, ok = await slow_neighbour(dsn, sizes, payload)
        print()
        print(
            f"== (ii) a neighbour holding its connection 1 s per event, {sizes.neighbour_rate}/s =="
        )
        print(text)
        goals.append(("(ii) first consumer p99 <= 50 ms beside a slow neighbour", ok))

        log("(iii) steady state against PgQueuer")
        settings = consume.Settings(
            backlog=0,
            subjects=50,
            history=0,
            rate=sizes.steady_rate,
            duration=sizes.steady_seconds,
            rounds=1,
            latency_rounds=1,
            quick=quick,
        )
        dsn = await server.create_database("horizon_steady")
        pgq_dsn = await server.create_database("horizon_pgqueuer", dispatch_schema=False)
        conn = await asyncpg.connect(pgq_dsn)
        try:
            await consume.Queries(consume.AsyncpgDriver(conn)).install()
        finally:
            await conn.close()
        ours = await consume.dispatch_latency(dsn, settings, payload)
        theirs = await consume.pgq_latency(pgq_dsn, settings, json.dumps(payload).encode())
        print()
        print(f"== (iii) steady state, {sizes.steady_rate}/s ==")
        print(f"dispatch-aio  {summary(ours)}")
        print(f"PgQueuer      {summary(theirs)}")
        goals.append(
            (
                "(iii) p99 <= PgQueuer's p99",
                common.percentile(ours, 99) <= common.percentile(theirs, 99),
            )
        )
        goals.append(
            (
                "(iii) p50 <= PgQueuer's p50",
                common.percentile(ours, 50) <= common.percentile(theirs, 50),
            )
        )
        print()
        print("== goals ==")
        for text, passed in goals:
            print(f"{'PASS' if passed else 'FAIL'}  {text}")
        if quick:
            print("(--quick: small sizes, figures meaningless)")
        return 0 if quick or all(p for _, p in goals) else 1
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args()
    return asyncio.run(run(QUICK if args.quick else FULL, args.quick))


if __name__ == "__main__":
    sys.exit(main())
