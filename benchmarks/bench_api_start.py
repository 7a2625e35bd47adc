"""How long Prefect's temporary API server takes to start on a new PREFECT_HOME.

    python benchmarks/bench_api_start.py            # the installed Prefect, 3 fresh homes
    python benchmarks/bench_api_start.py --runs 5

Each run starts the server that a flow starts when no PREFECT_API_URL is set, in a
new temporary PREFECT_HOME (so it creates and migrates its database, as on a
user's first run), waits up to 300 s for it to answer, prints the time and stops
it. The runner and the demo allow ``aioray_runner._prefect.api.TEMPORARY_API_START_S``;
docs/measurements.md keeps the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ONE_RUN = """
import time
t0 = time.monotonic()
import prefect
from prefect.server.api.server import SubprocessASGIServer
imported = time.monotonic()
server = SubprocessASGIServer()
server.start(timeout=300)
started = time.monotonic()
server.stop()
print(f"prefect {prefect.__version__}: import {imported - t0:.1f} s,"
      f" first start on a new PREFECT_HOME {started - imported:.1f} s")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="prefect-home-") as home:
            env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            env.pop("PREFECT_API_URL", None)
            run = subprocess.run(
                [sys.executable, "-c", ONE_RUN],
                env=env,
                capture_output=True,
                text=True,
                timeout=400,
            )
            line = run.stdout.strip().splitlines()[-1:] or [f"failed: {run.stderr[-2000:]}"]
            print(line[0], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
