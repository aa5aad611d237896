"""The consumer that ``benchmarks/scale.py`` runs with ``dispatch-aio worker _scale_worker:make``.

Settings come from the environment (the benchmark sets them per run):
``SCALE_CONSUMER`` (name), ``SCALE_HANDLER`` (``cpu``: ~2 ms of CPU; ``io``: 20 ms of
awaited I/O), ``SCALE_CONCURRENCY``. The handler records its event in ``effects``
through the event's connection, so the row commits if and only if the outcome does.
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg

from dispatch_aio import Consumer, Event

EFFECT = "INSERT INTO effects (event_id, subject, position, pid) VALUES ($1, $2, $3, $4)"
CPU_SECONDS = 0.002
IO_SECONDS = 0.020


def burn(seconds: float) -> None:
    """Spin the CPU for ``seconds`` of this process's CPU time."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def make(pool: asyncpg.Pool) -> Consumer:
    name = os.environ.get("SCALE_CONSUMER", "scale")
    kind = os.environ.get("SCALE_HANDLER", "cpu")
    concurrency = int(os.environ.get("SCALE_CONCURRENCY", "4"))
    consumer = Consumer(pool, name=name, concurrency=concurrency, batch_size=100, poll_interval=1.0)
    pid = os.getpid()

    @consumer.on("credit.locked")
    async def handle(event: Event, conn: asyncpg.Connection) -> None:
        if kind == "cpu":
            burn(CPU_SECONDS)
        else:
            await asyncio.sleep(IO_SECONDS)
        await conn.execute(EFFECT, event.event_id, event.subject, event.position, pid)

    return consumer
