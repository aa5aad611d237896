"""The consumer: lifecycle and wiring (``_consumer``), the pure scheduler, the fetcher,
the group runner, the listener, and the consumer's side of the envelope codec."""

from __future__ import annotations

from ._config import ConsumerConfig, HandlerOptions
from ._consumer import Consumer, ConsumerState
from ._runner import ConsumerStats

__all__ = ["Consumer", "ConsumerConfig", "ConsumerState", "ConsumerStats", "HandlerOptions"]
