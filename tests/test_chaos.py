"""Chaos: supervisors SIGKILLed again and again during one long run (docs/failures.md, "Chaos").

A seeded killer (``tests/_chaos.py``) SIGKILLs a random live supervisor, several
times, while work runs; every body writes what it did to a ledger file. Judged
by what a user sees: under the plain ``Runtime``, every call submitted with
``reruns=`` ends with its value and nothing ran after the run whose value the
caller received; under ``AioRayTaskRunner``, every task run ends, the API agrees
with the flow on each one, no finished run starts again, every run of a body is
a run the API shows, and most complete through their retries. And a soak: flow
after flow in one process, each with a new runner, leaves no supervisor, thread
or file behind.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import anyio
import psutil
import pytest
import ray
from prefect import flow, task

from aioray_runner import AioRayFuture, AioRayTaskRunner, Runtime, current_attempt
from tests._chaos import Killer, Shape, check_prefect_chaos, note, read_ledger, run_chaos_flow
from tests._support import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

KILLS = 4

Result = tuple[str, int, int]  # (value, attempt, pid)


def named_actors() -> set[tuple[str, str]]:
    """``(namespace, name)`` of every live named actor (every supervisor is one)."""
    return {(a["namespace"], a["name"]) for a in ray.util.list_named_actors(all_namespaces=True)}


async def io_call(ledger: str, key: str, seconds: float) -> Result:
    note(ledger, "start", key, current_attempt().number)
    await asyncio.sleep(seconds)
    note(ledger, "finish", key, current_attempt().number)
    return key, current_attempt().number, os.getpid()


def sync_call(ledger: str, key: str, seconds: float) -> Result:
    note(ledger, "start", key, current_attempt().number)
    time.sleep(seconds)
    note(ledger, "finish", key, current_attempt().number)
    return key, current_attempt().number, os.getpid()


async def chained(ledger: str, up: Result, key: str) -> Result:
    note(ledger, "start", key, current_attempt().number)
    await asyncio.sleep(0.3)
    note(ledger, "finish", key, current_attempt().number)
    return f"{up[0]}>{key}", current_attempt().number, os.getpid()


async def test_calls_with_reruns_survive_repeated_supervisor_kills(
    ray_session: None, tmp_path: Path
) -> None:
    ledger = str(tmp_path / "ledger.txt")
    expected: dict[str, str] = {}
    futures: dict[str, AioRayFuture[Result]] = {}
    seen: set[int] = set()
    actors_before = named_actors()
    async with Runtime(supervisors=2, threads=16) as rt:

        def pids() -> list[int]:
            # A replacement that has not answered yet has no pid.
            found = [i["pid"] for i in rt.supervisor_info() if i.get("pid")]
            seen.update(found)
            return found

        pids()
        killer = Killer(pids, KILLS, every=1.5).start()
        try:
            for wave in range(5):
                for i in range(80):
                    key = f"w{wave}-io{i}"
                    futures[key] = rt.submit_call(io_call, (ledger, key, 1.0), reruns=KILLS)
                    expected[key] = key
                for i in range(24):
                    key = f"w{wave}-sync{i}"
                    futures[key] = rt.submit_call(sync_call, (ledger, key, 0.5), reruns=KILLS)
                    expected[key] = key
                for i in range(16):
                    head, tail = f"w{wave}-head{i}", f"w{wave}-tail{i}"
                    futures[head] = rt.submit_call(io_call, (ledger, head, 0.5), reruns=KILLS)
                    futures[tail] = rt.submit_call(
                        chained, (ledger, futures[head], tail), reruns=KILLS
                    )
                    expected[head], expected[tail] = head, f"{head}>{tail}"
                with anyio.fail_after(120):
                    for future in futures.values():
                        await future.wait()
                pids()
        finally:
            killer.stop()
        killed = {pid for _, pid in killer.killed}
        assert len(killed) == KILLS, killer.killed
        runs_by_key = read_ledger(ledger)
        for key, future in futures.items():
            value, attempt, pid = future.result(0)  # raises if any call was lost
            assert value == expected[key]
            runs = runs_by_key[key]
            # The run whose value the caller got is the last one: nothing ran after it.
            assert max(e.attempt for e in runs) == attempt, (key, runs)
            # Each earlier run ended with a supervisor this test killed.
            assert all(e.attempt == attempt or e.pid in killed for e in runs), (key, runs)
            assert any(e.what == "finish" and e.attempt == attempt and e.pid == pid for e in runs)
    # Nothing left behind: every supervisor process ever seen has ended, and no
    # actor (a standby, say) is left either.
    await wait_until(lambda: not any(psutil.pid_exists(p) for p in seen), within=30)
    await wait_until(lambda: named_actors() <= actors_before, within=30)


@pytest.mark.usefixtures("ray_session", "prefect_api")
def test_a_long_flow_under_repeated_supervisor_kills_keeps_the_api_true(tmp_path: Path) -> None:
    actors_before = named_actors()
    ledger = str(tmp_path / "ledger.txt")
    shape = Shape(waves=3, io=40, threads=20, ray_tasks=6, pairs=12, io_s=1.5, pair_s=0.8)
    run = run_chaos_flow(ledger, shape, kills=3, every=2.5, runner=AioRayTaskRunner())
    assert len(run.killed) == 3, run.killed
    verdict = check_prefect_chaos(run, ledger)
    assert verdict.task_runs == shape.waves * shape.per_wave
    assert not verdict.problems(), verdict.problems()
    assert verdict.completed_share >= 0.9, verdict.states
    # Nothing left behind: every supervisor process the flow had has ended.
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(p) for p in run.supervisor_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in run.supervisor_pids if psutil.pid_exists(p)]
    while (left := named_actors() - actors_before) and (time.monotonic() < deadline):
        time.sleep(0.2)
    assert not left, f"actors left behind (a standby?): {left}"


# -- a soak of repeated flows (benchmarks/bench_flow_soak.py runs 50) -----------------------


@task
async def soak_fetch(i: int) -> int:
    await asyncio.sleep(0.05)
    return i


@task
def soak_parse(i: int) -> int:
    return i * 2


@flow(task_runner=AioRayTaskRunner())
def soak_flow() -> int:
    fetched = [soak_fetch.submit(i) for i in range(20)]
    parsed = [soak_parse.submit(i) for i in range(10)]
    return sum(f.result() for f in fetched + parsed)


@pytest.mark.usefixtures("ray_session", "prefect_api")
def test_repeated_flows_leave_nothing_behind() -> None:
    # A long-running process (a worker) runs flow after flow, each with a new
    # runner: none may leave a supervisor, a thread or a file open behind.
    me = psutil.Process()
    before = named_actors()
    counts = []
    for _ in range(8):
        assert soak_flow() == sum(range(20)) + 2 * sum(range(10))
        deadline = time.monotonic() + 15
        while (left := named_actors() - before) and (time.monotonic() < deadline):
            time.sleep(0.2)
        assert not left, f"supervisors left behind: {left}"
        counts.append((me.num_threads(), me.num_fds()))
    # The first flows start what stays for the process (Prefect's workers, a
    # client's pools); after them, nothing may grow with each flow.
    (threads_3, fds_3), (threads_8, fds_8) = counts[2], counts[-1]
    # (A little slack: a thread of a pool may start late; a leak per flow shows +5.)
    assert threads_8 <= threads_3 + 2, counts
    assert fds_8 <= fds_3 + 3, counts
