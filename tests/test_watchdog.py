"""The blocked-loop watchdog without Ray: its classifier, its probe, a loop in this process.

The Ray tests (a supervisor that blocks, is stopped, is starved) are in
``tests/test_faults.py``; these pin down the reasoning they rely on.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys
import threading
import time
from typing import Any

import cloudpickle
import pytest

from aioray_runner._common import wire as _wire
from aioray_runner._common.watchdog import (
    BLOCKED,
    BLOCKING_CALL,
    BLOCKING_CAUSES,
    BUSY,
    ELSEWHERE,
    GARBAGE_COLLECTOR,
    HELD_THE_GIL,
    UNSCHEDULED,
    BlockedLoop,
    Evidence,
    Stall,
    Watchdog,
    classify,
    watch_asyncio_loop,
)
from tests import _support
from tests._support import spin_for

LINUX = sys.platform.startswith("linux")

# -- the classifier ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("evidence", "cause"),
    [
        # time.sleep(1) in an async def: asleep, the same call in every sample.
        (
            Evidence(
                1.0,
                cpu=0.001,
                run_wait=0.0,
                stopped=0.0,
                samples=8,
                states=8,
                sleeping=8,
                culprit=8,
            ),
            BLOCKING_CALL,
        ),
        # A CPU-bound loop: on a CPU the whole time.
        (
            Evidence(
                1.0,
                cpu=0.97,
                run_wait=0.02,
                stopped=0.0,
                samples=8,
                states=8,
                culprit=8,
            ),
            BUSY,
        ),
        # The case: the process starved on a loaded machine. The frame was
        # the user's (an await line) in every sample, and did nothing: a step
        # that takes microseconds was preempted, and barely ran.
        (
            Evidence(
                1.6,
                cpu=0.002,
                run_wait=1.3,
                stopped=0.0,
                samples=6,
                states=6,
                culprit=6,
            ),
            UNSCHEDULED,
        ),
        # Starved, with the current run-queue wait not counted yet by the kernel:
        # the thread was runnable in every sample.
        (
            Evidence(1.5, cpu=0.01, run_wait=0.1, stopped=0.0, samples=6, states=6, culprit=6),
            UNSCHEDULED,
        ),
        # SIGSTOP for 2 s: no CPU, no run-queue wait, and the watchdog stopped too;
        # the one sample, after it, caught the loop asleep (in its selector).
        (
            Evidence(
                2.1, cpu=0.01, run_wait=0.0, stopped=2.0, samples=1, states=1, sleeping=1, culprit=1
            ),
            UNSCHEDULED,
        ),
        # The loop busy, but with a different call (or none of the user's) in
        # most samples: Prefect's engine, many short steps.
        (
            Evidence(1.0, cpu=0.9, run_wait=0.0, stopped=0.0, samples=8, states=8, culprit=2),
            ELSEWHERE,
        ),
        (
            Evidence(1.0, cpu=0.9, run_wait=0.0, stopped=0.0, samples=8, states=8),
            ELSEWHERE,
        ),
        # A CPU-bound loop on an overloaded machine: it got a sixth of a CPU, but
        # used more than a slow step's worth of it without yielding.
        (
            Evidence(
                1.0,
                cpu=0.16,
                run_wait=0.8,
                stopped=0.0,
                samples=12,
                states=12,
                culprit=12,
            ),
            BUSY,
        ),
        # Another: a fifth of a CPU, and that fifth alone (1 s) stalls the loop
        # past the threshold.
        (
            Evidence(
                5.0,
                cpu=1.0,
                run_wait=4.0,
                stopped=0.0,
                samples=30,
                states=30,
                culprit=30,
            ),
            BUSY,
        ),
        # A C call holding the GIL: the watchdog could not run (one late
        # sample), but the loop's thread was on a CPU all along.
        (
            Evidence(1.0, cpu=1.0, run_wait=0.0, stopped=0.0, samples=1, states=1, culprit=1),
            BUSY,
        ),
        # No /proc, no per-thread clock: only a stopped process is told apart.
        (Evidence(1.0, cpu=None, run_wait=None, stopped=0.0, samples=4, culprit=4), BLOCKED),
        (Evidence(1.0, cpu=None, run_wait=None, stopped=0.9, samples=1, culprit=1), UNSCHEDULED),
        # A per-thread clock but no schedstat (not Linux): the thread's states say
        # it was runnable while it barely ran.
        (
            Evidence(1.0, cpu=0.05, run_wait=None, stopped=0.0, samples=4, states=4, culprit=4),
            UNSCHEDULED,
        ),
    ],
)
def test_the_classifier_tells_a_blocking_call_from_a_process_that_did_not_run(
    evidence: Evidence, cause: str
) -> None:
    assert classify(evidence, threshold=0.5) == cause


def test_only_a_blocking_cause_says_how_the_call_blocked() -> None:
    def told(cause: str) -> str:
        return str(
            BlockedLoop("supervisor 0 (pid 1 on x)", 1.0, ("f#1",), (1,), "f (a.py:3)", cause)
        )

    assert "on a CPU" in told(BUSY) and "blocking call" not in told(BUSY).split(";")[0]
    assert "blocking call" in told(BLOCKING_CALL).split(";")[0]
    assert "(" not in told(BLOCKED).split(" in f (a.py:3)")[1].split(";")[0]


# -- a watchdog on a loop in this process ----------------------------------------------------


def _time_sleep(seconds: float) -> None:
    time.sleep(seconds)  # the line the watchdog must name


async def _sleeps_in_async(seconds: float) -> None:
    _time_sleep(seconds)


async def _spins_in_async(seconds: float) -> None:
    spin_for(seconds)


def _stalls_of(blocker: Any, seconds: float) -> list[Stall]:
    """Run ``blocker(seconds)`` under a watchdog (threshold 0.2 s); the stalls it blamed on code."""
    stalls: list[Stall] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        me: asyncio.Task[Any] | None = None

        def culprits(task: asyncio.Task[Any] | None) -> tuple[tuple[int, str], ...]:
            return ((7, "blocker#7"),) if task is me and task is not None else ()

        watchdog = watch_asyncio_loop(loop, 0.2, culprits, stalls.append)
        try:
            await asyncio.sleep(0.3)
            me = asyncio.ensure_future(blocker(seconds))
            await me
            await asyncio.sleep(0.3)  # the heartbeat after the stall reports it
        finally:
            watchdog.stop()

    asyncio.run(main())
    # A loaded machine may add a stall of its own (not a call's): only the named ones.
    return [stall for stall in stalls if stall.cause in BLOCKING_CAUSES]


def _line_of(fn: Any, text: str) -> int:
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_a_blocking_sleep_is_named_with_its_file_and_line() -> None:
    (stall,) = _stalls_of(_sleeps_in_async, 1.0)
    if LINUX:  # elsewhere it may not tell a sleep from a busy loop
        assert stall.cause == BLOCKING_CALL
    assert stall.calls == ((7, "blocker#7"),)
    assert stall.where == f"_time_sleep ({__file__}:{_line_of(_time_sleep, 'time.sleep(')})"


def test_a_cpu_bound_loop_is_named() -> None:
    (stall,) = _stalls_of(_spins_in_async, 1.0)
    if LINUX:
        assert stall.cause == BUSY
    assert stall.calls == ((7, "blocker#7"),)
    assert stall.where.startswith(f"spin_for ({_support.__file__}:")


async def _holds_the_gil(seconds: float) -> None:
    # sum() over a range runs in C without letting the GIL go: the watching
    # thread cannot take one sample. About 30 million numbers a second here.
    sum(range(int(30_000_000 * seconds)))


def test_a_native_call_that_holds_the_gil_is_reported_named_or_not() -> None:
    # The watching thread samples the call only if it gets the GIL before the
    # loop beats (usually just after the native call returns); either way the
    # stall is reported as the loop's own code, never left out.
    (stall,) = _stalls_of(_holds_the_gil, 1.0)
    assert stall.cause == BUSY
    if stall.calls:
        assert stall.calls == ((7, "blocker#7"),)
        assert stall.where.startswith("_holds_the_gil (")
    else:
        # No sample during the call: it says native code held the GIL, or (on a
        # loaded machine) names the frame a sample caught just after the call
        # returned, before the loop beat again: the loop's own code either way.
        assert stall.where == HELD_THE_GIL or stall.where.startswith("_stalls_of ("), stall


def test_a_stall_no_sample_saw_while_the_watcher_waited_for_a_cpu_blames_no_code() -> None:
    # The loop's thread ran on a CPU, but the watching thread (not started here,
    # as if it waited for a CPU all along) never said it was held off the GIL:
    # nothing is said, and no call named. (Before, the beat blamed native code.)
    stalls: list[Stall] = []
    watchdog = Watchdog(0.1, lambda task: (), stalls.append)
    spin_for(0.5)
    watchdog.beat()
    time.sleep(0.05)
    watchdog.beat()
    # (On a loaded machine the spin may get little CPU: "unscheduled" is right then.)
    assert [stall for stall in stalls if stall.cause in BLOCKING_CAUSES] == []


def test_a_garbage_collection_is_not_blamed_on_a_call() -> None:
    threshold = 0.05
    # A heap of many small cycles, grown until one full collection of it takes
    # well over the threshold (it holds the GIL throughout: no sample sees it).
    heap: list[Any] = []
    took = 0.0
    while took < 3 * threshold and len(heap) < 12_000_000:
        for _ in range(max(len(heap), 500_000)):
            node: list[Any] = []
            node.append(node)
            heap.append(node)
        started = time.monotonic()
        gc.collect()
        took = time.monotonic() - started
    stalls: list[Stall] = []
    watchdog = Watchdog(threshold, lambda task: (), stalls.append)
    watchdog.start()
    try:
        for _ in range(10):  # the loop turning on time
            time.sleep(0.005)
            watchdog.beat()
        started = time.monotonic()
        gc.collect()
        took = time.monotonic() - started
        watchdog.beat()
    finally:
        watchdog.stop()
        del heap
    assert took > 2 * threshold, f"the collection took {took:.2f} s: too short to test with"
    # (A loaded machine may add a stall of its own, "unscheduled": not this test's.)
    collected = [stall for stall in stalls if stall.where == GARBAGE_COLLECTOR]
    assert [stall.cause for stall in collected] == [ELSEWHERE], stalls
    assert not [stall for stall in stalls if stall.cause in BLOCKING_CAUSES], stalls


def test_a_stall_the_watching_thread_slept_through_is_the_process_not_running() -> None:
    # As after a SIGSTOP: the loop's thread resumes first and beats before the
    # watching thread (not started here) has looked. The loop's thread used no
    # CPU meanwhile, so the process did not run: said so, no call named. (With
    # CPU time, something held the GIL: the test above.)
    stalls: list[Stall] = []
    watchdog = Watchdog(0.1, lambda task: (), stalls.append)
    time.sleep(0.5)
    watchdog.beat()
    assert stalls == [Stall(stalls[0].seconds, (), "", UNSCHEDULED)]


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/task")
def test_the_probe_reads_a_sleeping_thread_and_a_busy_one() -> None:
    from aioray_runner._common.watchdog import (
        _ThreadProbe,  # the probe is this module's test subject
    )

    probes: dict[str, Any] = {}
    ready = threading.Barrier(3)

    def sleeper() -> None:
        probes["sleeper"] = _ThreadProbe()
        ready.wait()
        time.sleep(1.0)

    def spinner() -> None:
        probes["spinner"] = _ThreadProbe()
        ready.wait()
        spin_for(1.0)

    threads = [threading.Thread(target=sleeper), threading.Thread(target=spinner)]
    for thread in threads:
        thread.start()
    ready.wait()
    before = {name: probe.times()[0] for name, probe in probes.items()}
    time.sleep(0.5)
    states = {name: probe.state() for name, probe in probes.items()}
    after = {name: probe.times()[0] for name, probe in probes.items()}
    for thread in threads:
        thread.join()
    assert states["sleeper"] == "S"
    assert states["spinner"] in ("R", "S")  # S only while it waits for the GIL
    # The spinner ran (most of) the half second, the sleeper next to nothing.
    assert after["spinner"] - before["spinner"] > 10 * (after["sleeper"] - before["sleeper"])


# -- shipped code keeps its file name ---------------------------------------------------------


def test_a_function_shipped_by_value_keeps_its_file_name() -> None:
    def local(x: int) -> int:  # local: cloudpickle ships it by value
        def inner() -> int:
            return 1 // x

        return inner()

    _, blob = _wire.FunctionCache().get(local)
    rebuilt = cloudpickle.loads(blob)
    assert rebuilt.__code__.co_filename == __file__
    assert rebuilt.__code__.co_firstlineno == local.__code__.co_firstlineno
    with pytest.raises(ZeroDivisionError) as raised:
        rebuilt(0)
    frames = [(entry.path, entry.name) for entry in raised.traceback]
    assert (__file__, "inner") in [(str(path), name) for path, name in frames]
