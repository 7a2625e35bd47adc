"""Fault scenarios that need a Ray of their own, run by ``tests/test_ray_lost.py``.

Each runs in a fresh process (``python -m tests._fault_scripts NAME``): the test
session's own Ray cannot be killed or extended with nodes. Each prints one
``PIDS {...}`` line as soon as it knows which processes it started (so the test
can check none outlives it) and one ``RESULT {...}`` line at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psutil
import ray

from aioray_runner import RayLostError, Runtime, SupervisorDiedError


def emit(kind: str, payload: dict[str, Any]) -> None:
    print(f"{kind} {json.dumps(payload)}", flush=True)


def ray_pids() -> dict[str, int]:
    node: Any = ray._private.worker._global_node
    return {name: info.process.pid for name, infos in node.all_processes.items() for info in infos}


def our_descendants() -> list[int]:
    return [p.pid for p in psutil.Process().children(recursive=True)]


async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"


async def node_of_call() -> str:
    return ray.get_runtime_context().get_node_id()


# -- Ray itself killed under a Runtime ------------------------------------------------------


async def ticks() -> AsyncIterator[int]:
    """0, 1, 2, ... one every 50 ms, for an hour."""
    for i in range(72_000):
        yield i
        await asyncio.sleep(0.05)


async def ray_lost(which: str) -> None:
    async with Runtime(supervisors=1) as rt:
        futures = [rt.submit(nap, 3600) for _ in range(20)]
        stream = rt.stream(ticks)  # a stream mid-way ends with the calls
        streamed = [await stream.__anext__() for _ in range(3)]
        await asyncio.sleep(1)  # running on the supervisor
        pids = ray_pids()
        emit("PIDS", {"pids": our_descendants()})
        killed_at = time.monotonic()
        os.kill(pids[which], signal.SIGKILL)
        errors = []
        for future in futures:
            await asyncio.wait_for(future.wait(), 60)
            errors.append(f"{type(future.exception(0)).__name__}: {future.exception(0)}")
        try:
            with anyio.fail_after(60):
                async for value in stream:
                    streamed.append(value)
            stream_error = "none"
        except Exception as exc:
            stream_error = f"{type(exc).__name__}: {exc}"
        ended = time.monotonic() - killed_at
        try:
            rt.submit(nap, 1)
            after = "accepted"
        except RayLostError as exc:
            after = f"RayLostError: {exc}"
    emit(
        "RESULT",
        {
            "ended_s": ended,
            "closed_s": time.monotonic() - killed_at,
            "errors": errors,
            "stream_error": stream_error,
            "streamed": streamed[:3],
            "submit_after": after,
            "killed_pid": pids[which],
        },
    )


# -- the same under a Prefect flow, with Prefect's temporary API -------------------------------


def prefect_ray_lost() -> None:
    from prefect import flow, task

    from aioray_runner import AioRayTaskRunner

    @task
    async def sleepy(i: int) -> int:
        await asyncio.sleep(3600)
        return i

    @flow(task_runner=AioRayTaskRunner())
    async def doomed() -> dict[str, Any]:
        futures = sleepy.map(range(10))
        await asyncio.sleep(2)  # running on the supervisor
        emit("PIDS", {"pids": our_descendants()})
        killed_at = time.monotonic()
        os.kill(ray_pids()["gcs_server"], signal.SIGKILL)
        for future in futures:
            await future.wait_async(timeout=60)
        return {
            "ended_s": time.monotonic() - killed_at,
            "types": [f.state.type.value for f in futures],
            "messages": [f.state.message or "" for f in futures],
        }

    started = time.monotonic()
    state = asyncio.run(doomed(return_state=True))
    out = state.result() if state.is_completed() else {}
    out.update(flow_state=state.type.value, flow_s=time.monotonic() - started)
    emit("RESULT", out)


# -- a node of a two-node cluster removed -------------------------------------------------------


async def node_lost() -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        async with Runtime(supervisors=2) as rt:
            homes = {i["index"]: i["node_id"] for i in rt.supervisor_info()}
            doomed_index = next(i for i, n in homes.items() if n == worker.node_id)
            futures = [rt.submit(nap, 3600) for _ in range(100)]
            await asyncio.sleep(2)  # running on both supervisors
            emit("PIDS", {"pids": our_descendants()})
            removed_at = time.monotonic()
            cluster.remove_node(worker)
            lost = [f for f in futures if f.supervisor == doomed_index]
            kinds = []
            for future in lost:
                await asyncio.wait_for(future.wait(), 120)
                kinds.append(type(future.exception(0)).__name__)
            ended = time.monotonic() - removed_at
            others_pending = sum(not f.done() for f in futures if f.supervisor != doomed_index)
            after = [rt.submit(node_of_call) for _ in range(20)]
            after_nodes = [await asyncio.wait_for(f, 120) for f in after]
            for future in futures:
                future.cancel()
        emit(
            "RESULT",
            {
                "lost": len(lost),
                "kinds": kinds,
                "ended_s": ended,
                "others_pending": others_pending,
                "after_nodes": after_nodes,
                "head": cluster.head_node.node_id,
                "removed": worker.node_id,
                "message": str(lost[0].exception(0)) if lost else "",
            },
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    name = sys.argv[1]
    if name == "ray-lost":
        asyncio.run(ray_lost(sys.argv[2]))
    elif name == "prefect-ray-lost":
        prefect_ray_lost()
    elif name == "node-lost":
        asyncio.run(node_lost())
    else:
        raise SystemExit(f"unknown scenario {name!r}")


if __name__ == "__main__":
    main()
    # SupervisorDiedError is what a lost node's calls end with.
    assert issubclass(RayLostError, SupervisorDiedError)
