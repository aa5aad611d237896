"""``python -m dispatch_aio``: the ``dispatch-aio`` command line."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":  # importing the module (pkgutil.walk_packages) runs nothing
    raise SystemExit(main())
