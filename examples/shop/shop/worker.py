"""The shop's worker: projects ``payment.received`` into ``shop_revenue_by_person``.

Run it with ``DATABASE_URL=... dispatch-aio worker shop.worker:consumer``, or
``DATABASE_URL=... python -m shop.worker``. ``consumer`` is a factory: a Consumer needs a
pool, and a pool needs a running event loop, so whoever runs the worker makes the pool
and calls ``consumer(pool)``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
from dispatch_aio import Consumer, Event

NAME = "shop-revenue"


async def project_payment(event: Event, conn: asyncpg.Connection) -> None:
    """Add a payment to its person's totals.

    The write goes through ``conn``: it commits together with the event's "handled"
    marker, so each payment is counted exactly once, even if the worker crashes or two
    workers run.
    """
    payment = event.payload
    await conn.execute(
        """
        INSERT INTO shop_revenue_by_person (person_id, currency, payments, total_cents)
        VALUES ($1, $2, 1, $3)
        ON CONFLICT (person_id, currency) DO UPDATE
        SET payments = shop_revenue_by_person.payments + 1,
            total_cents = shop_revenue_by_person.total_cents + EXCLUDED.total_cents
        """,
        payment["person_id"],
        payment["currency"],
        payment["amount_cents"],
    )


def consumer(pool: asyncpg.Pool, **options: Any) -> Consumer:
    """The shop's consumer on ``pool``; ``options`` go to :class:`~dispatch_aio.Consumer`."""
    built = Consumer(pool, name=NAME, **options)
    built.on("payment.received")(project_payment)
    return built


async def main() -> None:
    """Run the worker until SIGTERM or SIGINT."""
    async with asyncpg.create_pool(os.environ["DATABASE_URL"]) as pool:
        await consumer(pool).run()


if __name__ == "__main__":
    asyncio.run(main())
