"""Does the blocked-loop watchdog name a deliberate ``time.sleep(1)`` right?

Runs ``--sleeps`` (5) async calls, one after the other, each blocking its
supervisor's loop with ``time.sleep(1)`` (the mistake the watchdog is for), with
``--burners`` (0) processes burning CPU beside it, and counts the calls named
with this file and the line of the ``time.sleep``. The function is defined in
``__main__``, so cloudpickle ships it by value (the case that used to say
``<dynamic-code>``).

Usage::

    python benchmarks/bench_watchdog.py                 # an idle machine
    python benchmarks/bench_watchdog.py --burners 2     # a loaded one

Not a test: it prints figures. The exit code is 1 if a sleep was not named
right, or if something else was named.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

import argparse
import asyncio
import inspect
import subprocess
import sys
import time

from aioray_runner import BlockedLoop, Runtime

BURN = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end:\n    pass\n"


async def sleeps_in_async(seconds: float) -> str:
    time.sleep(seconds)  # noqa: ASYNC251 - the mistake this script is about
    return "done"


async def sleep_in_turn(sleeps: int) -> tuple[list[str], list[BlockedLoop]]:
    """Block a supervisor's loop ``sleeps`` times; the calls' labels and what was reported."""
    seen: list[BlockedLoop] = []
    labels = []
    async with Runtime(
        supervisors=1, on_blocked_loop=seen.append, init_kwargs={"include_dashboard": False}
    ) as rt:
        for _ in range(sleeps):
            future = rt.submit(sleeps_in_async, 1.0)
            assert await future == "done"
            labels.append(future.label)
            await asyncio.sleep(1.0)  # the report arrives with the next poll
    return labels, seen


def main(sleeps: int, burners: int) -> int:
    """Run the sleeps beside ``burners`` CPU burners; print and judge what was named."""
    lines, first = inspect.getsourcelines(sleeps_in_async)
    line = first + next(i for i, text in enumerate(lines) if "time.sleep(" in text)
    expected = f"sleeps_in_async ({os.path.abspath(__file__)}:{line})"
    burning = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(burners)]
    try:
        labels, seen = asyncio.run(sleep_in_turn(sleeps))
    finally:
        for process in burning:
            process.kill()
            process.wait()
    named = {label: [s for s in seen if s.calls == (label,)] for label in labels}
    right = sum(1 for found in named.values() if [s.where for s in found] == [expected])
    others = [s for s in seen if not set(s.calls) & set(labels)]
    print(f"expected: {expected}")
    for stall in seen:
        print(f"  {stall.calls} {stall.cause}: {stall.where} ({stall.seconds:.2f} s)")
    print(f"named right: {right} of {sleeps}; other stalls named: {len(others)}")
    return 0 if right == sleeps and not others else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sleeps", type=int, default=5)
    parser.add_argument("--burners", type=int, default=0)
    args = parser.parse_args()
    sys.exit(main(args.sleeps, args.burners))
