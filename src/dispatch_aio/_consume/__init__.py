"""The consumer: lifecycle and wiring (``_consumer``), the pure scheduler, the fetcher,
the group runner, the listener, the consumer's side of the envelope codec, and the
partition and lease parts (assignment, horizon, leases)."""

from __future__ import annotations

from ._config import ConsumerConfig, HandlerOptions
from ._consumer import Consumer, ConsumerState
from ._outcomes import ConsumerStats

__all__ = ["Consumer", "ConsumerConfig", "ConsumerState", "ConsumerStats", "HandlerOptions"]
