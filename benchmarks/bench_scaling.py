"""How throughput grows with supervisors and nodes, and where the caller is the limit.

For each cluster size (a ``ray.cluster_utils.Cluster`` of 1, 2, 3 nodes on this
machine, every node on 127.0.0.1) and each supervisor count, one ``Runtime``
runs N trivial coroutines and N ``asyncio.sleep`` calls, and the script prints:

* throughput (calls/s) and wall time;
* the caller's CPU per call (``time.process_time`` of this process, its I/O
  thread included): one caller process can take in at most ``1 / that`` results
  a second, whatever the cluster's size. That is the driver's limit;
* the supervisors' CPU per call (from ``Runtime.stats()``): how many calls a
  second one supervisor can run at most, so how many supervisors the caller's
  limit can feed.

On one machine the nodes share its cores: more nodes add processes, not CPU.
The figures that carry to a real cluster are the per-call CPU costs, not the
throughput (docs/scaling.md does that arithmetic).

Usage::

    python benchmarks/bench_scaling.py                       # 1, 2, 3 nodes; N=10,000
    python benchmarks/bench_scaling.py --nodes 1,2 --n 5000 --json /tmp/scaling.json
"""

from __future__ import annotations

import os

# Before Ray is imported: every node on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import ray
from _common import log, write_figures

import aioray_runner
from aioray_runner import Runtime
from aioray_runner._tools.bench.common import quiet_environment, table
from aioray_runner._tools.bench.core import check_sum, noop, sleep_then, warm_up


async def one_run(rt: Runtime, n: int, delay: float | None, label: str) -> dict[str, Any]:
    """``n`` calls; wall time, the caller's and the supervisors' CPU per call."""
    before = await rt.stats()
    cpu0, started = time.process_time(), time.perf_counter()
    futures = [
        rt.submit(noop, i) if delay is None else rt.submit(sleep_then, i, delay) for i in range(n)
    ]
    total = 0
    for future in futures:
        total += await future
    wall = time.perf_counter() - started
    caller_cpu = time.process_time() - cpu0
    check_sum(label, total, n)
    after = await rt.stats()
    supervisor_cpu = sum(a["cpu_s"] for a in after) - sum(b["cpu_s"] for b in before)
    return {
        "n": n,
        "wall_s": wall,
        "per_s": n / wall,
        "caller_cpu_us": 1e6 * caller_cpu / n,
        "supervisor_cpu_us": 1e6 * supervisor_cpu / n,
        "supervisors_on_nodes": len({info["node_id"] for info in rt.supervisor_info()}),
    }


async def measure(address: str, supervisors: list[int], args: argparse.Namespace) -> list[Any]:
    out = []
    for k in supervisors:
        async with Runtime(address=address, supervisors=k) as rt:
            await warm_up(rt, 100)
            for kind, delay in (("trivial", None), ("sleep", args.delay)):
                label = f"{k} supervisor(s), {kind}"
                result = await one_run(rt, args.n, delay, label)
                result.update(supervisors=k, kind=kind)
                out.append(result)
                log(
                    f"   {label}: {result['wall_s']:.2f} s, {result['per_s']:,.0f}/s;"
                    f" caller {result['caller_cpu_us']:.0f} us/call,"
                    f" supervisors {result['supervisor_cpu_us']:.0f} us/call,"
                    f" on {result['supervisors_on_nodes']} node(s)"
                )
    return out


def run_cluster(nodes: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    from ray.cluster_utils import Cluster

    log(f"== a Cluster of {nodes} node(s), {args.cpus_per_node} CPU(s) each")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": args.cpus_per_node, "include_dashboard": False},
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=args.cpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            counts = sorted({1, nodes, 2 * nodes})
            results = asyncio.run(measure(cluster.address, counts, args))
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    for result in results:
        result["nodes"] = nodes
    return results


def report(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            str(r["nodes"]),
            str(r["supervisors"]),
            r["kind"],
            f"{r['wall_s']:.2f}",
            f"{r['per_s']:,.0f}",
            f"{r['caller_cpu_us']:.0f}",
            f"{r['supervisor_cpu_us']:.0f}",
            f"{1e6 / r['caller_cpu_us']:,.0f}",
        ]
        for r in results
    ]
    return table(
        [
            "nodes",
            "supervisors",
            "calls",
            "wall s",
            "calls/s",
            "caller CPU us/call",
            "supervisors' CPU us/call",
            "caller limit calls/s",
        ],
        rows,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--n", type=int, default=10_000, help="calls per measurement")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds per sleep")
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_environment()
    os.environ.pop("RAY_ADDRESS", None)  # never join a Ray this script did not start
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for nodes in args.nodes:
        results.extend(run_cluster(nodes, args))
    print(report(results))
    log(f"== done in {time.perf_counter() - started:.0f} s")
    if args.json:
        write_figures(
            args.json,
            "bench_scaling",
            args,
            {"aioray-runner": aioray_runner.__version__, "ray": ray.__version__},
            results=results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
