"""Fan-out to other services: signed POSTs of each event to its subscribers' inboxes.

Needs the ``[delivery]`` extra (httpx); nothing in the core imports this module::

    from dispatch_aio import FanoutConfig
    from dispatch_aio.fanout import Fanout, run_fanout

    config = FanoutConfig.load("fanout.json")     # endpoints per registry subscriber
    async with Fanout(pool, config) as fanout:    # a consumer fanout.<name> per endpoint
        await fanout.wait()

See ``docs/cross-service.md``.
"""

from ._delivery.fanout import Fanout, run_fanout
from ._delivery.httpx_transport import GuardedTransport
from ._delivery.ssrf import Resolver

__all__ = ["Fanout", "GuardedTransport", "Resolver", "run_fanout"]
