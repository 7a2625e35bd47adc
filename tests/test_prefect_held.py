"""Task runs' results where they are: a result above ``hold_results_above`` stays on
its supervisor; the run's state reaches the flow (and the API) at once, the result
only when something reads it, and downstream tasks read it on the supervisors.

Judged against Prefect's ThreadPoolTaskRunner of the same release: the same flow
gives the same results, states and API records. The flow's memory is this
process's resident set, read inside the flow.
"""

from __future__ import annotations

import functools
import gc
import os
from typing import Any

import pytest
from prefect import flow, task
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from aioray_runner import AioRayTaskRunner

from ._prefect_support import poll, task_run_state_type

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")

MIB = 1024 * 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


@task
async def partition(i: int) -> bytes:
    return bytes([i % 251]) * (10 * MIB)


@task
async def reduce_sizes(parts: list[bytes]) -> int:
    return sum(len(p) + p[0] for p in parts)


@task
async def big(i: int) -> bytes:
    return bytes([i]) * (2 * MIB)


@task
def big_sync(i: int) -> bytes:
    return bytes([i]) * (2 * MIB)


@pytest.mark.slow  # forty 10 MiB results: once, on the newest Ray and Prefect
def test_a_map_of_big_results_feeds_a_reduce_without_passing_through_the_flow() -> None:
    @flow(task_runner=AioRayTaskRunner(supervisors=2))
    def pipeline() -> tuple[int, float, list[str]]:
        gc.collect()
        before = rss_mib()
        parts = partition.map(range(40))
        total = reduce_sizes.submit(parts).result()
        grown = rss_mib() - before
        return total, grown, [p.state.type.value for p in parts]

    total, grown, states = pipeline()
    assert total == sum(10 * MIB + i % 251 for i in range(40))
    assert states == ["COMPLETED"] * 40
    # 40 x 10 MiB: passing through the flow would grow it by 400 MiB.
    assert grown < 150, f"the flow grew by {grown:.0f} MiB for results it never read"


async def _every_way_to_read(runner: Any) -> dict[str, Any]:
    @flow(task_runner=runner)
    async def reads() -> dict[str, Any]:
        a, b, c, d = big.submit(1), big.submit(2), big_sync.submit(3), big.submit(4)
        wait([a, b, c, d])  # Prefect's wait: completion only
        out: dict[str, Any] = {"types": [f.state.type.value for f in (a, b, c, d)]}
        # Under AioRayTaskRunner: every result still on its supervisor at this point.
        out["held"] = [
            getattr(getattr(f, "wrapped_future", None), "held", None) for f in (a, b, c, d)
        ]
        out["result"] = a.result()[:3]
        out["await"] = (await b)[:3] if hasattr(b, "__await__") else b.result()[:3]
        out["state.result"] = (await c.state.aresult())[:3]
        out["downstream"] = reduce_sizes.submit([d, a]).result()
        out["ids"] = [f.task_run_id for f in (a, b, c, d)]
        return out

    return await reads()


@pytest.mark.anyio
async def test_held_results_read_every_way_as_under_the_thread_pool() -> None:
    ours = await _every_way_to_read(AioRayTaskRunner(supervisors=1))
    theirs = await _every_way_to_read(ThreadPoolTaskRunner())
    for key in ("types", "result", "await", "state.result", "downstream"):
        assert ours[key] == theirs[key], key
    assert ours["held"] == [True] * 4 and theirs["held"] == [None] * 4
    assert ours["result"] == b"\x01\x01\x01" and ours["downstream"] == 4 * MIB + 5
    for run_id in ours["ids"]:  # the API heard of each run's state
        poll(functools.partial(task_run_state_type, run_id), "COMPLETED".__eq__, within=30)
