"""Faults, core runtime: supervisors killed with SIGKILL under load, blocked loops.

What the user sees is asserted: which calls fail and with what message, which
calls run anyway, and what reaches the ``aioray_runner`` logger.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioray_runner import (
    Attempt,
    BlockedLoop,
    Runtime,
    SupervisorDiedError,
    UpstreamError,
    current_attempt,
)
from aioray_runner._common.watchdog import BLOCKING_CALL, BUSY
from tests import _support
from tests._support import spin_for, wait_until

pytestmark = pytest.mark.anyio


async def sleep_then_pid(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()


async def add_pid(value: int) -> tuple[int, int]:
    return value + 1, os.getpid()


def blocking_sleep(seconds: float) -> None:
    time.sleep(seconds)


async def blocks_the_loop(seconds: float) -> str:
    blocking_sleep(seconds)  # the mistake: a blocking call inside async def
    return "done"


async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"


async def running_on(rt: Runtime, pid: int, at_least: int) -> bool:
    return any(s["running"] >= at_least for s in await rt.stats() if s["pid"] == pid)


async def test_calls_that_never_started_survive_a_supervisor_kill(ray_session: None) -> None:
    # The scenario: 1,000 calls sleep on two supervisors, one is killed,
    # 200 more are submitted at once. Half of those went to the dead one
    # before its death was noticed; they never started, so none may fail.
    async with Runtime(supervisors=2) as rt:
        sleepers = [rt.submit(sleep_then_pid, 20) for _ in range(1000)]
        victim = rt.supervisor_info()[0]
        victim_pid, victim_ip = victim["pid"], victim["node_ip"]
        await wait_until(lambda: running_on(rt, victim_pid, 400), within=60)
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
        fresh = [rt.submit(sleep_then_pid, 0.2) for _ in range(200)]

        with anyio.fail_after(60):
            fresh_pids = [await f for f in fresh]
        assert victim_pid not in fresh_pids  # none ran on the dead one

        lost = [f for f in sleepers if f.supervisor == 0]
        with anyio.fail_after(60):
            for future in lost:
                with pytest.raises(SupervisorDiedError) as info:
                    await future
        message = str(info.value)
        assert lost[-1].label in message
        assert f"pid {victim_pid}" in message and victim_ip in message
        assert "resubmit" in message
        print(
            f"\n{len(lost)} started calls lost, 0 of 200 fresh calls failed;"
            f" last outcome {time.monotonic() - killed_at:.1f} s after the kill"
        )
        # The sleepers on the other supervisor were never touched.
        kept = [f for f in sleepers if f.supervisor == 1]
        with anyio.fail_after(60):
            assert all(pid != victim_pid for pid in [await f for f in kept])


async def test_calls_queued_behind_the_cap_run_on_the_replacement(ray_session: None) -> None:
    async with Runtime(supervisors=1, max_concurrency=4) as rt:
        old_pid = rt.supervisor_info()[0]["pid"]
        futures = [rt.submit(sleep_then_pid, 3600 if i < 4 else 0.1) for i in range(20)]
        await wait_until(lambda: running_on(rt, old_pid, 4))
        os.kill(old_pid, signal.SIGKILL)
        with anyio.fail_after(60):
            for future in futures[:4]:  # started: lost
                with pytest.raises(SupervisorDiedError):
                    await future
            pids = [await f for f in futures[4:]]  # queued: never started, run elsewhere
        assert len(pids) == 16 and old_pid not in pids


async def test_dependents_of_a_lost_call_fail_with_upstream_error(ray_session: None) -> None:
    async with Runtime(supervisors=1) as rt:
        pid = rt.supervisor_info()[0]["pid"]
        upstream = rt.submit(sleep_then_pid, 3600)
        finished = rt.submit(sleep_then_pid, 0)
        await finished  # its outcome is held here now
        await wait_until(lambda: running_on(rt, pid, 1))
        waiting = rt.submit(add_pid, upstream)  # waits on the supervisor for upstream
        uses_finished = rt.submit(add_pid, finished)
        assert await uses_finished == (pid + 1, pid)
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(60):
            with pytest.raises(SupervisorDiedError):
                await upstream
            with pytest.raises(UpstreamError) as info:
                await waiting
        assert info.value.upstream == upstream.label
        assert "SupervisorDiedError" in str(info.value) and "died" in str(info.value)
        # An outcome the caller already holds still feeds a new call.
        value, new_pid = await rt.submit(add_pid, finished)
        assert (value, new_pid != pid) == (pid + 1, True)


async def test_a_dependent_elsewhere_follows_an_upstream_that_was_sent_again(
    ray_session: None,
) -> None:
    # The upstream waits behind the cap on supervisor 0 (never started); its
    # dependent waits for it on supervisor 1. Killing supervisor 0 must move
    # the upstream, and the dependent must find it where it went.
    async with Runtime(supervisors=2, max_concurrency=1) as rt:
        infos = {i["index"]: i["pid"] for i in rt.supervisor_info()}
        blockers = [rt.submit(nap, 3600) for _ in range(2)]  # one on each
        await wait_until(lambda: running_on(rt, infos[0], 1))
        await wait_until(lambda: running_on(rt, infos[1], 1))
        upstream = rt.submit(sleep_then_pid, 0.1)
        upstream_home = upstream.supervisor
        dependent = rt.submit(add_pid, upstream)
        assert dependent.supervisor != upstream_home
        await anyio.sleep(0.5)  # both have reached their supervisors
        os.kill(infos[upstream_home], signal.SIGKILL)
        with anyio.fail_after(60):
            moved_pid = await upstream
            assert moved_pid != infos[upstream_home]
            # The dependent's own supervisor is still busy with its blocker (cap 1):
            # free it so the dependent can run.
            blockers[1 - upstream_home].cancel()
            value, _ = await dependent
        assert value == moved_pid + 1


async def test_a_blocked_loop_is_reported_with_the_call_and_the_line(
    ray_session: None, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[BlockedLoop] = []
    with caplog.at_level(logging.WARNING, logger="aioray_runner"):
        async with Runtime(supervisors=1, blocked_loop_threshold=0.2) as rt:
            naps = [rt.submit(nap, 0.1) for _ in range(3)]
            culprit = rt.submit(blocks_the_loop, 1.5)
            assert await culprit == "done"
            assert [await f for f in naps] == ["woke"] * 3

            def warned() -> bool:
                return any("event loop was blocked" in r.getMessage() for r in caplog.records)

            await wait_until(warned, within=10)
            logged = culprit
        # The same, handed to a callback instead of the log.
        runtime = Runtime(supervisors=1, blocked_loop_threshold=0.2, on_blocked_loop=seen.append)
        async with runtime as rt:
            culprit = rt.submit(blocks_the_loop, 1.5)
            assert await culprit == "done"

            def reported() -> list[BlockedLoop]:
                return [s for s in seen if culprit.label in s.calls]

            await wait_until(reported, within=10)
    (stall,) = reported()
    assert stall.calls == (culprit.label,)
    assert 1.0 <= stall.seconds < 10
    assert stall.call_ids == (culprit.call_id,)
    assert stall.where == f"blocking_sleep ({__file__}:{line_of(blocking_sleep, 'time.sleep(')})"
    assert stall.cause == BLOCKING_CALL
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for m in messages if "event loop was blocked" in m and logged.label in m]
    assert len(warnings) == 1 and "asyncio.to_thread" in warnings[0]
    # The second runtime's stalls went to its callback only.
    assert not [m for m in messages if culprit.label in m and "event loop was blocked" in m]


async def test_the_watchdog_can_be_switched_off(
    ray_session: None, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[BlockedLoop] = []
    runtime = Runtime(supervisors=1, blocked_loop_threshold=None, on_blocked_loop=seen.append)
    async with runtime as rt:
        assert rt.supervisor_info()[0]["blocked_loop_threshold"] is None
        with caplog.at_level(logging.WARNING, logger="aioray_runner"):
            assert await rt.submit(blocks_the_loop, 1.0) == "done"
            await anyio.sleep(0.5)
    assert seen == []
    assert not [r for r in caplog.records if "event loop was blocked" in r.getMessage()]


async def spins_the_loop(seconds: float) -> int:
    return spin_for(seconds)  # the mistake: CPU-bound work inside async def


async def never_blocks(seconds: float) -> int:
    """Many short steps, each awaiting: the loop is mostly in this code, never stuck in it."""
    end, steps = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        sum(range(2_000))
        steps += 1
        await asyncio.sleep(0)
    return steps


def line_of(fn: Callable[..., Any], text: str) -> int:
    """The line number of the first line of ``fn``'s source that contains ``text``."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


async def test_blocking_code_shipped_by_value_is_named_with_its_file_and_line(
    ray_session: None,
) -> None:
    async def sleeps_in_async(seconds: float) -> str:  # local: cloudpickle ships it by value
        time.sleep(seconds)  # noqa: ASYNC251 - the mistake this test is about
        return "done"

    seen: list[BlockedLoop] = []
    runtime = Runtime(supervisors=1, blocked_loop_threshold=0.2, on_blocked_loop=seen.append)
    async with runtime as rt:
        sleeper = rt.submit(sleeps_in_async, 1.0)
        assert await sleeper == "done"
        await wait_until(lambda: seen, within=10)
        spinner = rt.submit(spins_the_loop, 0.6)
        assert await spinner > 0
        await wait_until(lambda: len(seen) >= 2, within=10)
    slept, spun = seen
    assert slept.calls == (sleeper.label,) and slept.cause == BLOCKING_CALL
    assert slept.where == f"sleeps_in_async ({__file__}:{line_of(sleeps_in_async, 'time.sleep(')})"
    assert spun.calls == (spinner.label,) and spun.cause == BUSY
    assert spun.where.startswith(f"spin_for ({_support.__file__}:")


def not_scheduled_mentions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "got little or no CPU" in r.getMessage()]


async def no_call_is_named_while(
    caplog: pytest.LogCaptureFixture, seconds: float, disturb: Callable[[int], Awaitable[None]]
) -> None:
    """Calls that never block run on one supervisor while ``disturb(its pid)`` runs:
    they all finish, no call is named, and the stall is mentioned as no CPU."""
    seen: list[BlockedLoop] = []
    runtime = Runtime(supervisors=1, blocked_loop_threshold=0.2, on_blocked_loop=seen.append)
    with caplog.at_level(logging.INFO, logger="aioray_runner"):
        async with runtime as rt:
            pid = rt.supervisor_info()[0]["pid"]
            work = [rt.submit(never_blocks, seconds) for _ in range(4)]
            await disturb(pid)
            assert all(steps > 0 for steps in [await f for f in work])
            await wait_until(lambda: not_scheduled_mentions(caplog), within=10)
    assert seen == []
    assert not [r for r in caplog.records if "event loop was blocked" in r.getMessage()]


async def test_a_stopped_supervisor_names_no_call(
    ray_session: None, caplog: pytest.LogCaptureFixture
) -> None:
    # The loop is in the user's code most of the time, so whatever frame is
    # current when the process stops is the user's: it did nothing wrong.
    async def stop_three_times(pid: int) -> None:
        await anyio.sleep(1.0)
        for _ in range(3):
            os.kill(pid, signal.SIGSTOP)
            try:
                await anyio.sleep(2.0)
            finally:
                os.kill(pid, signal.SIGCONT)
            await anyio.sleep(0.5)

    await no_call_is_named_while(caplog, 10.0, stop_three_times)
    assert len(not_scheduled_mentions(caplog)) == 1  # once a minute at most


BURN = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"


def start_burners(count: int, cpu: int) -> list[subprocess.Popen[bytes]]:
    """``count`` processes burning CPU ``cpu`` for at most a minute."""
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(count)]
    for burner in burners:
        os.sched_setaffinity(burner.pid, {cpu})
    return burners


def stop_burners(burners: list[subprocess.Popen[bytes]]) -> None:
    for burner in burners:
        burner.kill()
        burner.wait()


def set_threads(pid: int, cpus: set[int], policy: int) -> None:
    """Pin every thread of ``pid`` to ``cpus`` under scheduling ``policy`` (Linux: per thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
            os.sched_setscheduler(int(tid), policy, os.sched_param(0))
        except ProcessLookupError:  # a thread that just ended
            pass


async def test_a_starved_supervisor_names_no_call(
    ray_session: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Burners pinned to the supervisor's CPU, the supervisor at idle priority so
    # that it surely waits for them: its loop stalls in the user's code, which
    # did nothing wrong.
    async def starve(pid: int) -> None:
        cpus = os.sched_getaffinity(pid)
        cpu = min(cpus)
        burners = start_burners(3, cpu)
        try:
            set_threads(pid, {cpu}, os.SCHED_IDLE)
            await anyio.sleep(8.0)
        finally:
            set_threads(pid, cpus, os.SCHED_OTHER)
            stop_burners(burners)

    await no_call_is_named_while(caplog, 8.0, starve)


async def dies_on_first_run(marker: str) -> Attempt:
    path = anyio.Path(marker)
    if not await path.exists():
        await path.write_text("first run")
        os.kill(os.getpid(), signal.SIGKILL)
    return current_attempt()


async def test_a_call_allowed_to_rerun_runs_again_and_knows_it(
    ray_session: None, tmp_path: Path
) -> None:
    async with Runtime(supervisors=1) as rt:
        assert await rt.submit(current_attempt) == Attempt(1, "")
        with anyio.fail_after(60):
            attempt = await rt.submit_call(dies_on_first_run, (str(tmp_path / "a"),), reruns=1)
        assert attempt.number == 2
        assert "died" in attempt.previous_loss and "supervisor 0" in attempt.previous_loss
        # Without reruns the same call is lost, as any call that had started.
        with anyio.fail_after(60), pytest.raises(SupervisorDiedError):
            await rt.submit(dies_on_first_run, str(tmp_path / "b"))


async def test_cancelling_calls_waiting_to_start_leaves_the_others_alone(
    ray_session: None,
) -> None:
    # Calls with a dependency wait at the start gate (announced, not started)
    # for a moment: cancelling some then must cancel only those, and must not
    # upset the supervisor.
    async with Runtime(supervisors=1) as rt:
        pid = rt.supervisor_info()[0]["pid"]
        for _ in range(5):
            upstream = rt.submit(sleep_then_pid, 0)
            dependents = [rt.submit(add_pid, upstream) for _ in range(200)]
            for future in dependents[::2]:
                future.cancel()
            with anyio.fail_after(60):
                for future in dependents[1::2]:
                    assert await future == (pid + 1, pid)
                for future in dependents[::2]:
                    await future.wait()
                    assert future.cancelled() or future.result(0) == (pid + 1, pid)
        assert rt.supervisor_info()[0]["pid"] == pid  # never replaced
        assert await rt.submit(add_pid, 1) == (2, pid)


async def test_supervisors_that_keep_dying_as_they_start_are_not_replaced_forever(
    ray_session: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every supervisor imports this module as it starts (preload): once the
    # marker exists, the import fails, and so does every replacement. After
    # three in a row the runtime stops starting them and says why, instead of
    # replacing them every half second for ever.
    marker = tmp_path / "broken"
    (tmp_path / "breaks_when_told.py").write_text(
        "import os\n"
        "if os.path.exists(os.environ['BREAK_MARKER']):\n"
        "    raise ImportError('broken on purpose')\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "BREAK_MARKER": str(marker)}
    options = {"runtime_env": {"env_vars": env}}
    async with Runtime(supervisors=1, preload=["breaks_when_told"], actor_options=options) as rt:
        running = rt.submit(sleep_then_pid, 30)
        waiting = rt.submit(sleep_then_pid, 0)
        assert await waiting == rt.supervisor_info()[0]["pid"]
        marker.write_text("")
        os.kill(rt.supervisor_info()[0]["pid"], signal.SIGKILL)
        with anyio.fail_after(90), pytest.raises(SupervisorDiedError) as lost:
            await running
        gave_up = lambda: any("in a row failed" in r.getMessage() for r in caplog.records)  # noqa: E731
        await wait_until(gave_up, within=60)
        assert "supervisor 0" in str(lost.value)
        # New calls fail at once, naming the cause and where to look.
        with pytest.raises(
            SupervisorDiedError, match="3 supervisors in a row failed as they started"
        ) as refused:
            rt.submit(sleep_then_pid, 0)
        assert "preload" in str(refused.value)
        assert not rt.supervisor_info()  # none left running
