"""Fault figures for ``Runtime``: a supervisor killed under load, and the watchdog's cost.

Measures, in one Ray instance:

* **Kill under load** (the scenario of docs/failures.md): ``Runtime(supervisors=2)``,
  ``--in-flight`` (1,000) calls sleeping, supervisor 0 SIGKILLed once at least
  ``--in-flight``/3 of its calls run, then ``--fresh`` (200) calls submitted at
  once. Prints how many of the fresh calls failed (the goal: none: they never
  started), how many of the calls in flight on the dead supervisor were lost
  (they had started: ``SupervisorDiedError``), how many were announced to the
  caller yet still waited (0 here: nothing waits on a cap), and the time from the
  kill to the last outcome.
* **Watchdog overhead**: ``--n`` (10,000) trivial coroutines through a
  ``Runtime(supervisors=1)`` with the blocked-loop watchdog on (the default
  threshold) and off, alternated ``--repeat`` (5) times in one run; prints the
  median of each and their ratio.

* **Chaos** (``--phases chaos``; docs/failures.md, "Chaos"): the same long
  work with no kill and with ``--kills`` (4) SIGKILLs of a random supervisor
  ``--every`` (2.5) seconds apart, alternated, in one run. Under ``Runtime``
  (1 supervisor): waves of async calls, sync calls in threads and chained
  pairs, all with ``reruns``. Under ``AioRayTaskRunner``: the 560-task flow of
  ``tests/_chaos.py`` (4 waves of 60 async tasks, 40 sync tasks in threads, 20
  chained pairs, all ``retries=3``), with Prefect's temporary API as a first
  run has it. Prints each run's wall time and the ratio with kills to without
  (the goal: under 1.3x), and for the flow whether the API agreed with it on
  every task run, how many completed, and whether any finished run started again.

Usage::

    python benchmarks/bench_faults.py            # kill under load and watchdog overhead
    python benchmarks/bench_faults.py --phases chaos
    python benchmarks/bench_faults.py --repeat 9 --json /tmp/faults.json

These are not tests: they print figures. The exit code is 1 only if a result
was wrong, or a call that never started was lost.
"""

from __future__ import annotations

import os

# Before Ray is imported: keep a local Ray on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from aioray_runner import Runtime, Settings, SupervisorDiedError, current_attempt

# The chaos scenario is the test suite's (tests/_chaos.py): import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_BLOCKED_LOOP_THRESHOLD = Settings().blocked_loop_threshold


async def sleep_then_pid(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()


async def inc(i: int) -> int:
    return i + 1


async def kill_under_load(in_flight: int, fresh: int) -> dict[str, Any]:
    """The issue's scenario; see the module docstring."""
    async with Runtime(supervisors=2) as rt:
        sleepers = [rt.submit(sleep_then_pid, 30) for _ in range(in_flight)]
        victim = next(i["pid"] for i in rt.supervisor_info() if i["index"] == 0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = {s["pid"]: s["running"] for s in await rt.stats()}
            if stats.get(victim, 0) >= in_flight // 3:
                break
            await asyncio.sleep(0.05)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        fresh_futures = [rt.submit(sleep_then_pid, 0.2) for _ in range(fresh)]
        on_victim = [f for f in sleepers if f.supervisor == 0]
        outcomes: dict[str, int] = {"fresh ok": 0, "fresh failed": 0, "lost": 0, "other": 0}
        for future in fresh_futures:
            await future.wait()
            ok = future.exception(0) is None and future.result(0) != victim
            outcomes["fresh ok" if ok else "fresh failed"] += 1
        for future in on_victim:
            await future.wait()
            error = future.exception(0)
            outcomes["lost" if isinstance(error, SupervisorDiedError) else "other"] += 1
        last_outcome_s = time.monotonic() - killed_at
        for future in sleepers:
            future.cancel()
    return {
        "in_flight": in_flight,
        "on_killed_supervisor": len(on_victim),
        "fresh": fresh,
        **outcomes,
        "last_outcome_s": round(last_outcome_s, 2),
    }


async def trivial_round(n: int, threshold: float | None) -> float:
    async with Runtime(supervisors=1, blocked_loop_threshold=threshold) as rt:
        await asyncio.gather(*rt.map(inc, range(200)))  # warm up
        started = time.perf_counter()
        results = [await f for f in rt.map(inc, range(n))]
        took = time.perf_counter() - started
    if results != [i + 1 for i in range(n)]:
        raise AssertionError("wrong results")
    return took


async def watchdog_overhead(n: int, repeat: int) -> dict[str, Any]:
    on: list[float] = []
    off: list[float] = []
    for _ in range(repeat):  # alternated, so drift on a noisy machine hits both
        on.append(await trivial_round(n, DEFAULT_BLOCKED_LOOP_THRESHOLD))
        off.append(await trivial_round(n, None))
    median_on, median_off = statistics.median(on), statistics.median(off)
    return {
        "n": n,
        "threshold_s": DEFAULT_BLOCKED_LOOP_THRESHOLD,
        "on_s": [round(t, 3) for t in on],
        "off_s": [round(t, 3) for t in off],
        "median_on_s": round(median_on, 3),
        "median_off_s": round(median_off, 3),
        "ratio_on_to_off": round(median_on / median_off, 3),
    }


async def _wave_call(seconds: float, up: Any = None) -> int:
    await asyncio.sleep(seconds)
    return current_attempt().number


def _sync_wave_call(seconds: float) -> int:
    time.sleep(seconds)
    return current_attempt().number


async def chaos_runtime(kills: int, every: float) -> dict[str, Any]:
    """Five waves of 104 calls and 16 chained pairs on one supervisor, ``reruns=kills``."""
    from tests._chaos import Killer

    async with Runtime(supervisors=1, threads=32) as rt:
        pids = lambda: [i["pid"] for i in rt.supervisor_info() if i.get("pid")]  # noqa: E731
        killer = Killer(pids, kills, every, first=1.0).start()
        started = time.monotonic()
        futures = []
        try:
            for _ in range(5):
                wave = [rt.submit_call(_wave_call, (1.0,), reruns=kills) for _ in range(80)]
                wave += [rt.submit_call(_sync_wave_call, (0.5,), reruns=kills) for _ in range(24)]
                for _ in range(16):
                    head = rt.submit_call(_wave_call, (0.5,), reruns=kills)
                    wave += [head, rt.submit_call(_wave_call, (0.3, head), reruns=kills)]
                for future in wave:
                    await future.wait()
                futures += wave
        finally:
            killer.stop()
        took = time.monotonic() - started
    lost = sum(1 for f in futures if f.exception(0) is not None)
    reruns = sum(f.result(0) - 1 for f in futures if f.exception(0) is None)
    return {
        "kills": len(killer.killed),
        "calls": len(futures),
        "lost": lost,
        "reruns": reruns,
        "wall_s": round(took, 2),
    }


def chaos_prefect(kills: int, every: float) -> dict[str, Any]:
    """The 560-task flow of tests/_chaos.py, with ``kills`` supervisor SIGKILLs."""
    from aioray_runner import AioRayTaskRunner
    from tests._chaos import Shape, check_prefect_chaos, run_chaos_flow

    with tempfile.TemporaryDirectory() as tmp:
        ledger = str(Path(tmp) / "ledger.txt")
        started = time.monotonic()
        run = run_chaos_flow(ledger, Shape(), kills, every, runner=AioRayTaskRunner())
        took = time.monotonic() - started  # with the runner's exit and the API's recording
        verdict = check_prefect_chaos(run, ledger)
    return {
        "kills": len(run.killed),
        "task_runs": verdict.task_runs,
        "completed": verdict.completed,
        "states": dict(verdict.states),
        "api_disagrees": len(verdict.api_disagrees),
        "restarted_after_finishing": len(verdict.restarted_after_finishing),
        "unexplained_reruns": len(verdict.unexplained_reruns),
        "flow_body_s": round(run.ended - run.began, 2),
        "wall_s": round(took, 2),
        "after_last_kill_s": round(run.ended - run.killed[-1][0], 2) if run.killed else None,
    }


def chaos(kills: int, every: float, repeat: int) -> dict[str, Any]:
    """Both chaos scenarios, without and with kills, alternated ``repeat`` times."""
    import cloudpickle

    import tests._chaos

    # Supervisors import nothing from this checkout: send the scenario's code along.
    cloudpickle.register_pickle_by_value(tests._chaos)
    rows: dict[str, list[dict[str, Any]]] = {"runtime": [], "prefect": []}
    for _ in range(repeat):
        for k in (0, kills):
            rows["runtime"].append(asyncio.run(chaos_runtime(k, every)))
            rows["prefect"].append(chaos_prefect(k, every))
    out: dict[str, Any] = {"kills": kills, "every_s": every, "runs": rows}
    for name, runs in rows.items():
        calm = statistics.median(r["wall_s"] for r in runs if r["kills"] == 0)
        hit = statistics.median(r["wall_s"] for r in runs if r["kills"])
        out[f"{name}_ratio"] = round(hit / calm, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--fresh", type=int, default=200)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--kills", type=int, default=4, help="chaos: supervisor SIGKILLs")
    parser.add_argument("--every", type=float, default=2.5, help="chaos: seconds between kills")
    parser.add_argument(
        "--chaos-repeat", type=int, default=1, help="chaos: pairs of runs (without, with kills)"
    )
    parser.add_argument(
        "--phases", default="kill,watchdog", help="comma-separated: kill, watchdog, chaos"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    phases = set(args.phases.split(","))

    figures: dict[str, Any] = {}
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    try:
        if "kill" in phases:
            figures["kill_under_load"] = asyncio.run(kill_under_load(args.in_flight, args.fresh))
        if "watchdog" in phases:
            figures["watchdog"] = asyncio.run(watchdog_overhead(args.n, args.repeat))
        if "chaos" in phases:
            figures["chaos"] = chaos(args.kills, args.every, args.chaos_repeat)
    finally:
        ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    failed = False
    if "kill_under_load" in figures:
        print_kill(figures["kill_under_load"], args.in_flight)
        kill = figures["kill_under_load"]
        failed |= bool(kill["fresh failed"] or kill["other"])
    if "watchdog" in figures:
        print_watchdog(figures["watchdog"], args.n, args.repeat)
    if "chaos" in figures:
        failed |= print_chaos(figures["chaos"])
    return 1 if failed else 0


def print_kill(kill: dict[str, Any], in_flight: int) -> None:
    print(f"\nKill under load: supervisor 0 of 2 SIGKILLed with {in_flight} calls in flight")

    print(f"  calls on the killed supervisor:   {kill['on_killed_supervisor']}")
    print(f"  of those, lost (had started):      {kill['lost']}  (other outcomes: {kill['other']})")
    print(f"  fresh calls submitted after:       {kill['fresh']}")
    print(f"  of those, failed:                  {kill['fresh failed']}  (goal: 0)")
    print(f"  kill to the last outcome:          {kill['last_outcome_s']} s")


def print_watchdog(overhead: dict[str, Any], n: int, repeat: int) -> None:
    print(f"\nWatchdog overhead: {n:,} trivial coroutines, {repeat} rounds each")
    print(f"  on  (threshold {overhead['threshold_s']} s): median {overhead['median_on_s']} s")
    print(f"  off:                        median {overhead['median_off_s']} s")
    print(f"  ratio on/off: {overhead['ratio_on_to_off']} (goal: under 1.02)")


def print_chaos(chaos: dict[str, Any]) -> bool:
    """Print the chaos figures; returns whether a run lost a call or the API lied."""
    print(f"\nChaos: {chaos['kills']} supervisor SIGKILLs, {chaos['every_s']} s apart")
    failed = False
    for run in chaos["runs"]["runtime"]:
        print(
            f"  Runtime, {run['kills']} kills: {run['calls']} calls in {run['wall_s']} s,"
            f" {run['lost']} lost, {run['reruns']} reruns"
        )
        failed |= bool(run["lost"])
    print(f"  Runtime, with kills / without: {chaos['runtime_ratio']}x (goal: under 1.3x)")
    for run in chaos["runs"]["prefect"]:
        print(
            f"  Prefect flow, {run['kills']} kills: {run['task_runs']} task runs in"
            f" {run['wall_s']} s (body {run['flow_body_s']} s, ended"
            f" {run['after_last_kill_s']} s after the last kill), {run['completed']} completed,"
            f" API disagrees on {run['api_disagrees']}, restarted after finishing"
            f" {run['restarted_after_finishing']}, reruns the API does not show"
            f" {run['unexplained_reruns']}"
        )
        failed |= bool(run["api_disagrees"] or run["restarted_after_finishing"])
    print(f"  Prefect flow, with kills / without: {chaos['prefect_ratio']}x (goal: under 1.3x)")
    return failed


if __name__ == "__main__":
    sys.exit(main())
