"""The main job: a real Prefect flow on a temporary local Ray, no setup needed.

    python examples/pipeline.py               # 500 pages
    python examples/pipeline.py --pages 2000  # more (same as `aioray-runner demo`)

The flow and its tasks are in aioray_runner/demo.py (the package ships them, so
that `aioray-runner demo` runs the same job from an installed wheel): read them
there. In short, the flow "downloads" 500 pages (async tasks that await I/O, all
in flight at once on a supervisor actor), "parses" some of them (sync tasks, in
threads of the supervisor) and summarises them (an async task whose upstream
futures are resolved inside the supervisor).
"""

import os
import sys

# Before Ray is imported: Ray reads this once, at import, and then keeps this
# temporary local instance on 127.0.0.1 (aioray_runner.demo sets it too).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from aioray_runner.demo import main  # after the variable, on purpose

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
