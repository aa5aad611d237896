"""The second service: Delivery, with its own tables, fed through its inbox over HTTP.

Delivery runs as a process of its own (``delivery_service``): its inbox, served by
uvicorn on 127.0.0.1, inserts each event into Delivery's own event table (another
schema here; another database in real life), and Delivery's consumer handles it from
there, writing one row per event through its connection. In the demo's process,
Revenue's fan-out (a consumer ``fanout.delivery`` in Revenue's schema) POSTs each event,
signed, to that inbox. Meanwhile the demo sends the inbox a few forged requests (another service's
secret, a stale timestamp, an altered body, no signature, broken signature bytes): each
must be refused with 401 and write nothing.

Needs the ``[delivery]`` extra (httpx, FastAPI, uvicorn); without it the demo says so
and runs without this part.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .._delivery.config import FanoutConfig
from .._delivery.signatures import WebhookSecrets, generate_secret
from .._dispatcher import Dispatcher
from .._errors import DispatchError
from .._identifiers import quote_ident
from .._registry import Registry
from .domain import _RETRY_DELAYS, ACTOR, EVENT_TYPES, FEED_TABLE
from .summary import CrossServiceSummary

__all__ = [
    "RECEIVER",
    "Remote",
    "abandon",
    "delivery_available",
    "remote_service",
    "start_delivery",
]

#: The subscriber (in the registry) that the second service plays: it takes every type.
RECEIVER = "delivery"
_START_TIMEOUT = 60.0
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
    process: asyncio.subprocess.Process
    refused: int = 0
    forged_ids: list[str] = field(default_factory=list)

    async def wait_idle(self, expected: int) -> None:
        """Until the fan-out has delivered what was committed, and Delivery handled it."""
        await self.fanout.consumers[RECEIVER].wait_idle()
        feed = f"{quote_ident(self.schema)}.{FEED_TABLE}"
        # Another process's consumer: its progress can only be read from its table.
        while await self.pool.fetchval(f"SELECT count(*) FROM {feed}") < expected:
            if self.process.returncode is not None:
                raise DispatchError(f"the second service exited ({self.process.returncode})")
            await asyncio.sleep(0.05)

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
        """Stop the fan-out and Delivery (it drains), then read the final figures."""
        await self.fanout.aclose()
        self.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(self.process.wait(), _START_TIMEOUT)
        qschema = quote_ident(self.schema)
        received = await self.pool.fetch(
            f"SELECT event_id, count(*) OVER (PARTITION BY event_id) AS copies "
            f"FROM {qschema}.dispatcher_event"
        )
        rows = await self.pool.fetch(f"SELECT event_id, times FROM {qschema}.{FEED_TABLE}")
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
            service_exit_code=exit_code,
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


async def start_delivery(
    dsn: str, schema: str, secret: str
) -> tuple[asyncio.subprocess.Process, str]:
    """Start Delivery's process; its inbox URL once it accepts requests."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatch_aio.demo.delivery_service",
        schema,
        env={**os.environ, "DISPATCH_AIO_DEMO_DSN": dsn, "DISPATCH_AIO_DEMO_SECRET": secret},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), _START_TIMEOUT)
    except TimeoutError:
        line = b""
    except BaseException:  # cancelled: leave no process behind
        process.kill()
        await asyncio.shield(process.wait())
        raise
    if not line.startswith(b"url "):
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise DispatchError(
            f"the demo's second service did not start (exit {process.returncode}): "
            "see its messages above"
        )
    return process, line.split()[1].decode()


@contextlib.asynccontextmanager
async def remote_service(
    revenue_pool: asyncpg.Pool,
    revenue_schema: str,
    delivery: tuple[asyncio.subprocess.Process, str],
    schema: str,
    secret: str,
    registry: Registry,
) -> AsyncIterator[Remote]:
    """Revenue's fan-out to the running Delivery process of ``delivery``.

    On exit the fan-out is stopped (POSTs in flight finish) and the process, if still
    running, is killed; the caller drops Delivery's schema.
    """
    from ..fanout import Fanout

    process, url = delivery
    try:
        config = FanoutConfig.from_mapping(
            {
                "schema": revenue_schema,
                "endpoints": {
                    RECEIVER: {
                        "url": url,
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
        async with fanout:
            yield Remote(schema, url, revenue_pool, secret, fanout, process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def abandon(starting: asyncio.Task[tuple[asyncio.subprocess.Process, str]]) -> None:
    """Make sure the process ``starting`` started (or is starting) is gone."""
    if not starting.done():
        starting.cancel()
    with contextlib.suppress(BaseException):
        process, _ = await starting
        if process.returncode is None:
            process.kill()
            await process.wait()
