"""``python -m dispatch_aio``: the ``dispatch-aio`` command line."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
