"""``aioray-runner demo``: a Prefect pipeline on a local Ray (``python -m aioray_runner.demo``).

The demo lives in ``aioray_runner/_tools/demo.py``; this path stays for
``from aioray_runner.demo import main`` (``examples/pipeline.py``).
"""

from __future__ import annotations

import sys

from ._tools.demo import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
