"""Flows that need a process of their own (tests/test_prefect_cluster.py runs them).

    python -m tests._prefect_cluster_flows local TEMP_DIR
    python -m tests._prefect_cluster_flows cluster
    python -m tests._prefect_cluster_flows client ray://127.0.0.1:PORT

Each mode runs one flow with ``AioRayTaskRunner`` set up the way ``RayTaskRunner``
users set it up, and prints one ``RESULT {json}`` line. The Prefect API comes
from ``PREFECT_API_URL`` (the test session's server).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import ray
from prefect import flow, task
from prefect.context import FlowRunContext

from aioray_runner import AioRayTaskRunner, remote_options


@task
async def where_async(i: int) -> dict[str, Any]:
    await asyncio.sleep(0.2)
    return {"i": i, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}


@task
def where_sync(i: int) -> dict[str, Any]:
    context = ray.get_runtime_context()
    return {
        "i": i,
        "pid": os.getpid(),
        "node": context.get_node_id(),
        "actor": context.get_actor_id(),
    }


async def body(n: int) -> dict[str, Any]:
    runtime = FlowRunContext.get().task_runner._runtime
    async_futures = where_async.map(range(n))
    sync_futures = where_sync.map(range(4))  # threads of the supervisors
    with remote_options(num_cpus=1):
        ray_task_futures = where_sync.map(range(2))  # a Ray task each
    return {
        "ray_initialized_in_flow": ray.is_initialized(),
        "owns_ray": runtime.owns_ray,
        "supervisors": runtime.supervisor_info(),
        "alive_nodes": sorted(node["NodeID"] for node in ray.nodes() if node["Alive"]),
        "session_dir": _session_dir(),
        "async": [await f for f in async_futures],
        "sync": [f.result() for f in sync_futures],
        "sync_ray_tasks": [f.result() for f in ray_task_futures],
    }


def _session_dir() -> str | None:
    try:
        return ray._private.worker.global_worker.node.get_session_dir_path()
    except Exception:
        return None  # Ray client mode: no local node


def run(runner: AioRayTaskRunner, n: int) -> dict[str, Any]:
    before = ray.is_initialized()
    pipeline = flow(name="aioray-cluster-check", task_runner=runner)(body)
    state = asyncio.run(pipeline(n, return_state=True))
    out: dict[str, Any] = {
        "ray_initialized_before": before,
        "state": state.type.value,
        "message": state.message,
        "ray_initialized_after": ray.is_initialized(),
    }
    if state.is_completed():
        result = state.result()
        out.update(asyncio.run(result) if asyncio.iscoroutine(result) else result)
    return out


def main(argv: list[str]) -> None:
    mode = argv[1]
    if mode == "local":
        runner = AioRayTaskRunner(
            init_kwargs={"num_cpus": 2, "include_dashboard": False, "_temp_dir": argv[2]}
        )
        out = run(runner, 6)
    elif mode == "cluster":
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        try:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            out = run(AioRayTaskRunner(address=cluster.address, supervisors=2), 20)
            nodes = cluster.list_all_nodes()
            if all(hasattr(node, "node_id") for node in nodes):
                out["cluster_nodes"] = sorted(node.node_id for node in nodes)
            else:
                # Ray 2.10's Node has no node id: use the live nodes the flow saw
                # (the test checks there are two of them).
                out["cluster_nodes"] = out["alive_nodes"]
        finally:
            cluster.shutdown()
    elif mode == "client":
        out = run(AioRayTaskRunner(address=argv[2]), 6)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv)
