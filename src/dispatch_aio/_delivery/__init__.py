"""Cross-service delivery: signatures, the SSRF guard, endpoint configuration, the inbox
and fan-out.

``signatures``, ``ssrf``, ``config``, ``responses`` and ``inbox`` need only the core
dependencies; ``transport`` and ``fanout`` import httpx (the ``[delivery]`` extra) and are
reached only through the leaf module ``dispatch_aio.fanout``. Nothing is imported here.
"""
