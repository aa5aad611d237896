"""The shop's own tables, next to dispatch-aio's (run ``dispatch-aio migrate`` for those)."""

from __future__ import annotations

import asyncio
import os

import asyncpg

TABLES = """
CREATE TABLE IF NOT EXISTS shop_order (
    order_id      text        PRIMARY KEY,
    payment_id    text        NOT NULL UNIQUE,
    person_id     text        NOT NULL,
    amount_cents  bigint      NOT NULL,
    currency      text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Kept by the worker from payment.received events: what each person has paid.
CREATE TABLE IF NOT EXISTS shop_revenue_by_person (
    person_id     text   NOT NULL,
    currency      text   NOT NULL,
    payments      integer NOT NULL,
    total_cents   bigint NOT NULL,
    PRIMARY KEY (person_id, currency)
);
"""


async def create_tables(pool: asyncpg.Pool) -> None:
    """Create the shop's tables if they do not exist."""
    await pool.execute(TABLES)


async def main() -> None:
    """Create the tables in the database of ``DATABASE_URL``."""
    async with asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=1) as pool:
        await create_tables(pool)


if __name__ == "__main__":
    asyncio.run(main())
