"""How often the read loop stores cursors, without a database (ADR 0006)."""

from __future__ import annotations

import asyncio
from typing import Any

from dispatch_aio._consume._config import ConsumerConfig
from dispatch_aio._consume._reader import ReadLoop
from dispatch_aio._consume._scheduler import Scheduler


def read_loop(*, leases: Any) -> ReadLoop:
    # Nothing here touches the pool, the store or the fetcher.
    return ReadLoop(
        pool=None,  # type: ignore[arg-type]
        config=ConsumerConfig(name="c"),
        store=None,  # type: ignore[arg-type]
        fetcher=None,  # type: ignore[arg-type]
        scheduler=Scheduler({"credit.locked": (0, 0)}),
        stats=None,  # type: ignore[arg-type]
        stop_requested=asyncio.Event(),
        listening=lambda: True,
        refill_below=100,
        log_extra={},
        leases=leases,
    )


def test_one_cursor_row_is_stored_often_a_row_per_partition_held_less_often() -> None:
    loop = read_loop(leases=object())
    loop.cursor_partitions = None  # every partition held: the per-type cursor, one row
    single = loop._flush_every()
    # Part of a group: a row per partition held. Written as often, the rows of a group of
    # processes cost a few percent of a small machine's CPU (ADR 0006).
    loop.cursor_partitions = frozenset(range(128))
    assert loop._flush_every() >= 10 * single
    # No group at all (no lease store): the per-type cursor.
    loop = read_loop(leases=None)
    loop.cursor_partitions = frozenset(range(128))
    assert loop._flush_every() == single
