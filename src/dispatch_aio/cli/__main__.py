"""``python -m dispatch_aio.cli``."""

from __future__ import annotations

from . import main

if __name__ == "__main__":  # importing the module (pkgutil.walk_packages) runs nothing
    raise SystemExit(main())
