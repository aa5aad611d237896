"""``python -m dispatch_aio.cli``."""

from __future__ import annotations

from . import main

# Guarded: tools that import every module of the package must not run the command line.
if __name__ == "__main__":
    raise SystemExit(main())
