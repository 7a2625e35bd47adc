"""What does being watched by ``aioray-runner status --watch 1`` cost a running program?

A runtime holds ``--running`` (10,000) calls that sleep, so every status answer
has that many to count and sort, and runs rounds of ``--calls`` (60,000: a few
seconds, so several answers fall in each) short calls, timing each round.
Rounds alternate between unwatched and watched (the command running in another
process, refreshing every second, its output discarded), ``--rounds`` (6) of
each, in one run; the medians and their ratio are printed. On a 2-core machine
the watcher's own process competes for the CPU too: that is part of what being
watched costs here.

Usage::

    python benchmarks/bench_status.py
    python benchmarks/bench_status.py --rounds 10 --running 10000 --calls 60000

Not a test: it prints figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import ray

from aioray_runner import Runtime


async def sleeper(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def noop(i: int) -> int:
    return i


def start_watching(address: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    command = ["status", "--json", "--watch", "1", "--address", address]
    return subprocess.Popen(
        [sys.executable, "-m", "aioray_runner", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


async def main(rounds: int, running: int, calls: int) -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    address = str(ray.get_runtime_context().gcs_address)
    times: dict[str, list[float]] = {"unwatched": [], "watched": []}
    # Room for the held calls and a round beside them (the default cap is 10,000).
    cap = running + 2 * calls
    async with Runtime(supervisors=1, name="bench-status", max_concurrency=cap) as rt:
        held = [rt.submit(sleeper, 3600) for _ in range(running)]
        while sum(s["running"] for s in await rt.stats()) < running:  # noqa: ASYNC110 - polls Ray
            await asyncio.sleep(0.5)
        for f in [rt.submit(noop, i) for i in range(calls)]:  # warm up
            await f
        for round_ in range(2 * rounds):
            mode = "watched" if round_ % 2 else "unwatched"
            watcher = start_watching(address) if mode == "watched" else None
            try:
                if watcher is not None:
                    await asyncio.sleep(8)  # joined, and answering every second
                started = time.perf_counter()
                for f in [rt.submit(noop, i) for i in range(calls)]:
                    await f
                took = time.perf_counter() - started
            finally:
                if watcher is not None:
                    watcher.terminate()
                    watcher.wait(30)
            times[mode].append(took)
            print(f"round {round_ + 1}: {mode:9} {calls / took:8.0f} calls/s", flush=True)
        for f in held:
            f.cancel()
    plain, watched = (statistics.median(times[m]) for m in ("unwatched", "watched"))
    print(
        f"median of {rounds} rounds each, {running} calls running: unwatched"
        f" {calls / plain:.0f} calls/s, watched every second {calls / watched:.0f} calls/s;"
        f" watched/unwatched time {watched / plain:.3f}x"
    )
    ray.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--running", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=60_000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.running, args.calls))
