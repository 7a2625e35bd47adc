"""``python -m aioray_runner``: the same as the ``aioray-runner`` command."""

import sys

from .cli import main

sys.exit(main())
