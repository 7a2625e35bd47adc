"""What one Prefect task run costs Prefect's API, under each runner: requests by endpoint.

Runs Prefect's API server of its own with every request counted
(``_counting_api.py``: method and path, body bytes; each websocket message, which
is how Prefect's events arrive, counted as one), then, for each runner and kind of
task, two flows of ``--small`` and ``--large`` task runs of ``sleep(0.01)``. The
difference between the two, divided by the difference in task runs, is what one
more task run costs, free of each flow's own requests:

* ``threads-async``, ``threads-sync``: Prefect's ``ThreadPoolTaskRunner``;
* ``gather``: async tasks awaited with ``asyncio.gather`` in the flow (no runner);
* ``aioray-async``, ``aioray-thread``, ``aioray-ray``: ``AioRayTaskRunner``, an async
  task, a sync task in a supervisor's thread (``sync_tasks="threads"``), a sync
  task as a Ray task (``sync_tasks="ray"``).

CPU per task run of each kind of process (the flow's, the supervisors, the API
server, Ray's) is measured the same way. Usage::

    python benchmarks/bench_requests.py
    python benchmarks/bench_requests.py --small 10 --large 60 --json /tmp/requests.json
"""

from __future__ import annotations

import os

# Before Ray or Prefect is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import log, write_figures

from aioray_runner._tools.bench.common import local_ray, table

KINDS = ("threads-async", "threads-sync", "gather", "aioray-async", "aioray-thread", "aioray-ray")


@contextmanager
def counting_api() -> Iterator[str]:
    """Prefect's API server with counted requests, on a free loopback port: its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tempfile.mkdtemp(prefix="bench-requests-")
    env = {
        **os.environ,
        "PREFECT_HOME": home,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "_counting_api:create_app"]
    command += ["--app-dir", str(Path(__file__).parent), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the counting Prefect API did not start") from None
                time.sleep(0.5)
        log(f"   counting Prefect API at {url}/api")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def counts(url: str, *, reset: bool = False) -> dict[str, dict[str, int]]:
    target = f"{url}/_counts/reset" if reset else f"{url}/_counts"
    request = urllib.request.Request(target, method="POST" if reset else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def settled(url: str, quiet: float = 3.0, within: float = 90.0) -> dict[str, dict[str, int]]:
    """The counts once nothing new has arrived for ``quiet`` seconds (events trail a flow)."""
    deadline = time.monotonic() + within
    last, since = counts(url), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.5)
        now = counts(url)
        if now != last:
            last, since = now, time.monotonic()
    return last


def build_flow(kind: str) -> Any:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from aioray_runner import AioRayTaskRunner

    @task
    async def anap(i: int) -> int:
        await asyncio.sleep(0.01)
        return i

    @task
    def nap(i: int) -> int:
        time.sleep(0.01)
        return i

    if kind == "gather":

        @flow(name="bench-requests")
        async def gathered(n: int) -> int:
            return sum(await asyncio.gather(*(anap(i) for i in range(n))))

        return gathered
    runner: Any = {
        "threads-async": ThreadPoolTaskRunner,
        "threads-sync": ThreadPoolTaskRunner,
        "aioray-async": AioRayTaskRunner,
        "aioray-thread": lambda: AioRayTaskRunner(sync_tasks="threads"),
        "aioray-ray": lambda: AioRayTaskRunner(sync_tasks="ray"),
    }[kind]()
    the_task = anap if kind.endswith("async") else nap

    @flow(name="bench-requests", task_runner=runner)
    def submitted(n: int) -> int:
        return sum(f.result() for f in [the_task.submit(i) for i in range(n)])

    return submitted


def measure(url: str, kind: str, n: int) -> dict[str, Any]:
    from bench_limits import CpuByRole

    the_flow = build_flow(kind)
    settled(url)
    counts(url, reset=True)
    with CpuByRole() as cpu:
        result = the_flow(n)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        seen = settled(url)
    assert result == n * (n - 1) // 2, result
    return {**seen, "cpu_s": cpu.seconds()}


def per_task(
    small: dict[str, Any], large: dict[str, Any], small_n: int, large_n: int
) -> dict[str, Any]:
    """What one more task run cost, and what the small flow cost beyond its task runs."""
    runs = large_n - small_n

    def diff(part: str, at_least: float) -> dict[str, float]:
        keys = set(small[part]) | set(large[part])
        out = {k: (large[part].get(k, 0) - small[part].get(k, 0)) / runs for k in keys}
        return {k: v for k, v in out.items() if abs(v) >= at_least}

    requests = diff("requests", 0.005)
    per_flow = {
        k: v - small_n * requests.get(k, 0.0)
        for k, v in small["requests"].items()
        if abs(v - small_n * requests.get(k, 0.0)) >= 0.5
    }
    return {
        "requests": requests,
        "bytes_in": diff("bytes_in", 0.5),
        "cpu_s": diff("cpu_s", 0.0),
        "per_flow_requests": per_flow,
    }


def report(figures: dict[str, Any]) -> str:
    kinds = [k for k in KINDS if k in figures]
    endpoints = sorted({e for k in kinds for e in figures[k]["requests"]})
    rows = [[e, *(f"{figures[k]['requests'].get(e, 0):.2f}" for k in kinds)] for e in endpoints]
    rows.append(
        [
            "all requests",
            *(f"{sum(figures[k]['requests'].values()):.2f}" for k in kinds),
        ]
    )
    rows.append(
        ["body KiB in", *(f"{sum(figures[k]['bytes_in'].values()) / 1024:.2f}" for k in kinds)]
    )
    roles = sorted({r for k in kinds for r in figures[k]["cpu_s"]})
    for role in roles:
        rows.append(
            [f"CPU ms: {role}", *(f"{1000 * figures[k]['cpu_s'].get(role, 0):.2f}" for k in kinds)]
        )
    per_task_table = table(["per task run", *kinds], rows)
    flow_endpoints = sorted({e for k in kinds for e in figures[k]["per_flow_requests"]})
    flow_rows = [
        [e, *(f"{figures[k]['per_flow_requests'].get(e, 0):.0f}" for k in kinds)]
        for e in flow_endpoints
    ]
    per_flow_table = table(["per flow run, beyond its task runs", *kinds], flow_rows)
    return per_task_table + "\n\n" + per_flow_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10, help="task runs in the first flow")
    parser.add_argument("--large", type=int, default=60, help="task runs in the second")
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS))
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    figures: dict[str, Any] = {}
    with counting_api() as url:
        os.environ["PREFECT_API_URL"] = f"{url}/api"  # this process and Ray's workers
        with local_ray(2, log_to_driver=False):
            for kind in args.kinds:
                log(f"== {kind}: {args.small} then {args.large} task runs")
                small = measure(url, kind, args.small)
                large = measure(url, kind, args.large)
                figures[kind] = per_task(small, large, args.small, args.large)
    print(report(figures))
    if args.json:
        import prefect
        import ray

        versions = {"prefect": prefect.__version__, "ray": ray.__version__}
        write_figures(args.json, "bench_requests", args, versions, per_task_run=figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
