"""Cross-service delivery: signatures, the SSRF guard, endpoint configuration, the inbox
and fan-out.

``signatures``, ``ssrf``, ``config``, ``responses`` and ``inbox`` need only the core
dependencies; ``http1``, ``transport`` and ``fanout`` import httpx (the ``[delivery]``
extra: its exception types) and are reached only through the leaf module
``dispatch_aio.fanout``. Nothing is imported here.
"""
