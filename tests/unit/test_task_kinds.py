"""How a supervisor learns a sync task's kind from its first run (``_prefect/kinds.py``).

Real threads and a real event loop, no Ray: the probe is a thread that computes
or sleeps, watched through its CPU clock.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

from aioray_runner._prefect.kinds import CPU_S, RUN_CPU_S, WAIT_S, Probe, TaskKinds

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _engine(work: str, seconds: float) -> None:
    """Stands for Prefect's engine before it calls the task (another code object)."""
    if work == "cpu":
        _busy(seconds)
    else:
        time.sleep(seconds)


def _task_fn(work: str, seconds: float) -> None:
    if work == "cpu":
        _busy(seconds)
    else:
        time.sleep(seconds)


def _probe_in_thread(
    probe: Probe, work: str, seconds: float, engine: str = "", engine_s: float = 0.0
) -> threading.Thread:
    """Run a probe's 'task' in a thread of its own, reporting as remote.py does:
    first what Prefect's engine does before it calls the task's function
    (``engine``: "io" waits, "cpu" computes), then the function."""

    def run() -> None:
        probe.started(_task_fn.__code__)
        if engine:
            _engine(engine, engine_s)
        _task_fn(work, seconds)
        probe.finished(1)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def test_a_cpu_bound_probe_sends_the_runs_waiting_for_it_to_ray() -> None:
    kinds = TaskKinds(lambda: 1)
    kind, probe = await kinds.place("crunch")
    assert (kind, probe is not None) == ("thread", True)  # the first run is the probe
    assert probe is not None
    thread = _probe_in_thread(probe, "cpu", 4 * CPU_S)
    waiting = await asyncio.gather(*(kinds.place("crunch") for _ in range(3)))
    probe_done = not thread.is_alive()
    await asyncio.to_thread(thread.join)
    assert waiting == [("ray", None)] * 3
    assert not probe_done  # the verdict came while the probe still computed
    assert await kinds.place("crunch") == ("ray", None)  # and stays
    assert kinds.kind_of("other") is None  # per task


async def test_an_io_bound_probe_lets_the_waiting_runs_into_threads_before_it_ends() -> None:
    kinds = TaskKinds(lambda: 1)
    _, probe = await kinds.place("fetch")
    assert probe is not None
    thread = _probe_in_thread(probe, "io", 1.0)
    waiting = await asyncio.gather(*(kinds.place("fetch") for _ in range(5)))
    probe_done = not thread.is_alive()
    await asyncio.to_thread(thread.join)
    assert waiting == [("thread", None)] * 5
    assert not probe_done  # decided while the probe still slept
    assert kinds.kind_of("fetch") == "thread"


@pytest.mark.parametrize("engine", ["io", "cpu"])
async def test_the_probe_is_watched_from_the_tasks_own_code_on(engine: str) -> None:
    """An engine that waits for the API first does not make a CPU-bound task look
    I/O-bound, nor does one that computes make an I/O-bound task look CPU-bound."""
    kinds = TaskKinds(lambda: 1)
    _, cpu_probe = await kinds.place("crunch")
    _, io_probe = await kinds.place("fetch")
    assert cpu_probe is not None and io_probe is not None
    threads = [
        _probe_in_thread(cpu_probe, "cpu", 4 * CPU_S, engine, 2 * CPU_S),
        _probe_in_thread(io_probe, "io", 0.5, engine, 2 * CPU_S),
    ]
    placed = await asyncio.gather(kinds.place("crunch"), kinds.place("fetch"))
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert placed == [("ray", None), ("thread", None)]


async def test_a_short_probe_is_judged_by_its_end() -> None:
    kinds = TaskKinds(lambda: 1)
    _, probe = await kinds.place("quick")
    assert probe is not None
    thread = _probe_in_thread(probe, "cpu", CPU_S / 10)  # too little CPU to need a core
    assert await kinds.place("quick") == ("thread", None)
    await asyncio.to_thread(thread.join)
    assert kinds.kind_of("quick") == "thread"


async def test_a_probe_that_never_reports_keeps_nobody_waiting_for_long() -> None:
    kinds = TaskKinds(lambda: 1)
    _, probe = await kinds.place("stuck")
    assert probe is not None  # never started: say, still waiting for a thread
    started = time.monotonic()
    assert await kinds.place("stuck") == ("thread", None)
    assert time.monotonic() - started < WAIT_S + 1.0
    assert kinds.kind_of("stuck") is None  # the verdict is still the probe's to give


async def test_a_probe_whose_function_never_ran_teaches_nothing() -> None:
    """A cached result, or a run cancelled before its thread: the next run probes."""
    kinds = TaskKinds(lambda: 1)
    _, cached = await kinds.place("cached")
    assert cached is not None
    profile: list[object] = []

    def engine_only() -> None:  # the engine returns a cached result: no call of the task
        cached.started(_task_fn.__code__)
        _engine("io", 0.01)
        cached.finished(1)
        profile.append(sys.getprofile())

    await asyncio.to_thread(engine_only)
    await asyncio.wait_for(cached.over.wait(), 5)
    assert profile == [None]  # the probe's profile hook is gone with it
    assert kinds.kind_of("cached") is None
    kind, next_probe = await kinds.place("cached")
    assert kind == "thread" and next_probe is not None and next_probe is not cached

    _, cancelled = await kinds.place("cancelled")
    assert cancelled is not None
    kinds.drop(cancelled)  # its run never reached a thread
    assert cancelled.over.is_set() and kinds.kind_of("cancelled") is None
    assert (await kinds.place("cancelled"))[1] is not None


async def test_a_later_run_that_computes_changes_the_verdict() -> None:
    """A task that downloads first and parses after passes its probe as I/O-bound;
    a run that then keeps the CPU sends the later ones to Ray tasks."""
    kinds = TaskKinds(lambda: 1)
    _, probe = await kinds.place("parse")
    assert probe is not None
    await asyncio.to_thread(_probe_in_thread(probe, "io", 0.2).join)
    assert kinds.kind_of("parse") == "thread"
    assert not kinds.judge_run("parse", RUN_CPU_S / 2, RUN_CPU_S, 1)  # too little CPU
    assert not kinds.judge_run("parse", RUN_CPU_S, 4 * RUN_CPU_S, 1)  # too small a share
    assert kinds.judge_run("parse", RUN_CPU_S, 1.5 * RUN_CPU_S, 1)
    assert await kinds.place("parse") == ("ray", None)
