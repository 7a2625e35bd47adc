"""Does the blocked-loop watchdog name a deliberate ``time.sleep(1)`` right?

Runs ``--sleeps`` (5) async calls, one after the other, each blocking its
supervisor's loop with ``time.sleep(1)`` (the mistake the watchdog is for), with
``--burners`` (0) processes burning CPU beside it, and counts the calls named
with this file and the line of the ``time.sleep``. The function is defined in
``__main__``, so cloudpickle ships it by value (the case that used to say
``<dynamic-code>``).

With ``--main-job N`` it runs the README's main job (``examples/pipeline.py``,
whose tasks never block) N times instead, beside the same burners, and counts
the blocked-loop warnings it printed: every one is a false positive. The lines
that say a supervisor got no CPU, or was busy with work of no single call, or
was paused by the garbage collector, are counted apart (they are right).

Usage::

    python benchmarks/bench_watchdog.py                            # an idle machine
    python benchmarks/bench_watchdog.py --burners 2 --sleeps 10    # a loaded one
    python benchmarks/bench_watchdog.py --burners 2 --main-job 10  # false positives

Not a test: it prints figures. The exit code is 1 if a sleep was not named
right, or if something else was named (with ``--main-job``: if any run warned
of a blocked loop, or failed).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

import argparse
import asyncio
import inspect
import re
import subprocess
import sys
import time

from aioray_runner import BlockedLoop, Runtime

# Burns until this script kills it (a bound in case it cannot: four hours).
BURN = "import time\nend = time.monotonic() + 4 * 3600\nwhile time.monotonic() < end:\n    pass\n"


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


# A BlockedLoop warning (aioray_runner/_common/watchdog.py), and whether it names a call.
_WARNED = re.compile(r"its event loop was blocked for (?P<seconds>[0-9.]+) s(?P<by> by [^ ]+)?")
# The INFO mentions of stalls that are no call's (aioray_runner/_caller/reports.py).
_MENTIONED = ("got little or no CPU", "was busy for", "garbage collector")


def main_job(runs: int, burners: int) -> int:
    """Run the main job ``runs`` times beside ``burners`` burners; count blocked-loop warnings."""
    pipeline = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
    burning = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(burners)]
    warned = named = mentioned = failed = 0
    try:
        for run in range(1, runs + 1):
            started = time.monotonic()
            out = subprocess.run(
                [sys.executable, os.path.join(pipeline, "pipeline.py")],
                capture_output=True,
                text=True,
                timeout=900,
            )
            text = out.stdout + out.stderr
            warnings = [m for m in _WARNED.finditer(text)]
            mentions = sum(text.count(phrase) for phrase in _MENTIONED)
            warned += len(warnings)
            named += sum(1 for m in warnings if m.group("by"))
            mentioned += mentions
            failed += out.returncode != 0
            print(
                f"run {run}: exit {out.returncode} in {time.monotonic() - started:.0f} s;"
                f" blocked-loop warnings {len(warnings)}"
                f" ({sum(1 for m in warnings if m.group('by'))} naming a call);"
                f" stalls mentioned as no call's {mentions}",
                flush=True,
            )
            for m in warnings:
                print(f"    {m.group(0)}")
            if out.returncode != 0:
                print("    " + "\n    ".join(text.strip().splitlines()[-15:]))
    finally:
        for process in burning:
            process.kill()
            process.wait()
    print(
        f"{runs} runs beside {burners} burner(s): {warned} blocked-loop warnings,"
        f" {named} naming a call; {mentioned} stalls mentioned as no call's; {failed} failed"
    )
    return 0 if warned == 0 and failed == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sleeps", type=int, default=5)
    parser.add_argument("--burners", type=int, default=0)
    parser.add_argument(
        "--main-job", type=int, default=0, metavar="N", help="run the main job N times instead"
    )
    args = parser.parse_args()
    if args.main_job:
        sys.exit(main_job(args.main_job, args.burners))
    sys.exit(main(args.sleeps, args.burners))
