"""The second service: Delivery, with its own tables, fed through its inbox over HTTP.

Revenue's fan-out (a consumer ``fanout.delivery`` in Revenue's schema) POSTs each event,
signed, to Delivery's inbox, served by uvicorn on 127.0.0.1. The inbox inserts it into
Delivery's own event table (another schema here; another database in real life), and
Delivery's own consumer handles it from there, writing one row per event through its
connection. Meanwhile the demo sends the inbox a few forged requests (another service's
secret, a stale timestamp, an altered body, no signature, broken signature bytes): each
must be refused with 401 and write nothing.

Needs the ``[delivery]`` extra (httpx, FastAPI, uvicorn); without it the demo says so
and runs without this part.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .._consumer import Consumer
from .._delivery.config import FanoutConfig
from .._delivery.signatures import WebhookSecrets, generate_secret
from .._dispatcher import Dispatcher
from .._envelope import Event
from .._identifiers import quote_ident
from .._migrate import migrate
from .._registry import Registry
from .database import _connect
from .domain import _RETRY_DELAYS, ACTOR, EVENT_TYPES
from .summary import CrossServiceSummary

__all__ = ["RECEIVER", "Remote", "delivery_available", "remote_service"]

#: The subscriber (in the registry) that the second service plays: it takes every type.
RECEIVER = "delivery"
_LOCAL_CONSUMER = "delivery.lessons"
_FORGERIES = (
    "another service's secret",
    "a timestamp 10 minutes old",
    "an altered body",
    "no signature",
    "broken signature bytes",
)


def delivery_available() -> bool:
    """True when the ``[delivery]`` extra (httpx, FastAPI, uvicorn) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("httpx", "fastapi", "uvicorn"))


@dataclass
class Remote:
    """The running second service and what the demo saw of it."""

    schema: str
    url: str
    pool: asyncpg.Pool
    secret: str
    fanout: Any
    consumer: Consumer
    refused: int = 0
    forged_ids: list[str] = field(default_factory=list)

    async def wait_idle(self) -> None:
        """Until the fan-out has delivered what was committed, and Delivery handled it."""
        await self.fanout.consumers[RECEIVER].wait_idle()
        await self.consumer.wait_idle()

    async def forge(self, dispatcher: Dispatcher, subject: str) -> None:
        """Send the forged requests; count the ones refused with 401."""
        import httpx

        genuine = WebhookSecrets([self.secret])
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            for kind in _FORGERIES:
                payload = dispatcher.registry.example_payload("credit.reserved")
                event, _ = dispatcher.build(
                    "credit.reserved", payload, subject=subject, actor=ACTOR
                )
                self.forged_ids.append(event.event_id)
                body, headers = _forged(kind, event.event_id, event_body(event), genuine)
                answer = await http.post(self.url, content=body, headers=headers)
                self.refused += answer.status_code == 401

    async def stop_and_summarise(self, published_by_type: dict[str, int]) -> CrossServiceSummary:
        """Stop the fan-out and Delivery's consumer, then read the final figures."""
        await self.fanout.aclose()
        await self.consumer.aclose()
        qschema = quote_ident(self.schema)
        received = await self.pool.fetch(
            f"SELECT event_id, count(*) OVER (PARTITION BY event_id) AS copies "
            f"FROM {qschema}.dispatcher_event"
        )
        rows = await self.pool.fetch(f"SELECT event_id, times FROM {qschema}.lesson_feed")
        written = await self.pool.fetchval(
            f"SELECT count(*) FROM {qschema}.dispatcher_event WHERE event_id = ANY($1::text[])",
            self.forged_ids,
        )
        return CrossServiceSummary(
            subscriber=RECEIVER,
            schema_name=self.schema,
            expected=sum(published_by_type.get(t, 0) for t in EVENT_TYPES),
            received=len(received),
            received_more_than_once=sum(1 for r in received if r["copies"] > 1),
            handled=len(rows),
            handled_more_than_once=sum(1 for r in rows if r["times"] != 1),
            forged=len(self.forged_ids),
            refused=self.refused,
            forged_written=int(written),
        )


def event_body(event: Any) -> bytes:
    """An envelope's JSON body, as the fan-out sends it."""
    body: bytes = event.model_dump_json(exclude_none=True).encode()
    return body


def _forged(
    kind: str, event_id: str, body: bytes, genuine: WebhookSecrets
) -> tuple[bytes, dict[str, str]]:
    """A request of one forgery kind: the body and headers to send."""
    headers = genuine.sign(event_id, body)
    if kind == "another service's secret":
        headers = WebhookSecrets([generate_secret()]).sign(event_id, body)
    elif kind == "a timestamp 10 minutes old":
        stale = int(headers["webhook-timestamp"]) - 600
        headers = genuine.sign(event_id, body, timestamp=stale)
    elif kind == "an altered body":
        body = body.replace(b'"credit.reserved"', b'"credit.released"')
    elif kind == "no signature":
        headers = {}
    else:  # broken signature bytes
        # A character in the middle: the last one before the padding also holds
        # padding bits, and changing only those leaves the same signature bytes.
        signature = headers["webhook-signature"]
        middle = len(signature) // 2
        flipped = "A" if signature[middle] != "A" else "B"
        headers["webhook-signature"] = signature[:middle] + flipped + signature[middle + 1 :]
    headers["content-type"] = "application/json"
    return body, headers


@contextlib.asynccontextmanager
async def remote_service(
    revenue_pool: asyncpg.Pool, revenue_schema: str, dsn: str, schema: str, registry: Registry
) -> AsyncIterator[Remote]:
    """Delivery's schema ``schema``, inbox and consumer, and Revenue's fan-out to it.

    Everything is stopped (work in flight drained) on exit; the caller drops the schema.
    """
    from ..fanout import Fanout
    from ..inbox import serve_inbox

    pool = await _connect(dsn, 8)
    try:
        await migrate(pool, schema)
        qschema = quote_ident(schema)
        await pool.execute(
            f"CREATE TABLE {qschema}.lesson_feed (event_id text PRIMARY KEY, "
            "event_type text NOT NULL, times integer NOT NULL DEFAULT 1)"
        )
        secret = generate_secret()
        consumer = Consumer(
            pool,
            name=_LOCAL_CONSUMER,
            registry=registry,
            db_schema=schema,
            concurrency=4,
            poll_interval=1.0,
            drain_timeout=10.0,
        )

        async def feed(event: Event, conn: asyncpg.Connection) -> None:
            # Exactly once through the connection: a second copy would count times = 2.
            await conn.execute(
                f"INSERT INTO {qschema}.lesson_feed (event_id, event_type) VALUES ($1, $2) "
                "ON CONFLICT (event_id) DO UPDATE SET times = lesson_feed.times + 1",
                event.event_id,
                event.event_type,
            )

        for event_type in EVENT_TYPES:
            consumer.on(event_type)(feed)
        async with serve_inbox(
            dsn, secrets=[secret], registry=registry, schema=schema, pool_size=8
        ) as inbox:
            config = FanoutConfig.from_mapping(
                {
                    "schema": revenue_schema,
                    "endpoints": {
                        RECEIVER: {
                            "url": inbox.url,
                            "secrets": [secret],
                            "allow_private_network": True,  # loopback, on purpose
                            "retry_delays": list(_RETRY_DELAYS),
                            "concurrency": 4,
                        }
                    },
                }
            )
            fanout = Fanout(
                revenue_pool,
                config,
                registry=registry,
                consumer_options={"poll_interval": 1.0, "drain_timeout": 10.0},
            )
            async with consumer, fanout:
                yield Remote(schema, inbox.url, pool, secret, fanout, consumer)
    finally:
        await pool.close()
