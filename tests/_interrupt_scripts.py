"""Programs that ``tests/test_interrupt.py`` interrupts with Ctrl-C's SIGINT.

Each runs in a fresh process and session (``python -m tests._interrupt_scripts
NAME DIR``) with a Ray of its own, prints ``PIDS [...]`` (the processes it
started) once they run, and records in DIR what its calls did: one line in
``started`` as each call starts, one in ``unwound`` from each call's ``finally``.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

#: Calls (or task runs) in flight when the test sends SIGINT.
CALLS = 300
#: Of the task runs, the sync ones (in supervisor threads: they cannot unwind).
SYNC_TASK_RUNS = 10


def emit(kind: str, payload: object) -> None:
    print(f"{kind} {json.dumps(payload)}", flush=True)


def note(directory: str, name: str) -> None:
    with open(Path(directory) / name, "a") as file:
        file.write(".")


async def nap(directory: str) -> None:
    note(directory, "started")
    try:
        await asyncio.sleep(3600)
    finally:
        note(directory, "unwound")


async def runtime_job(directory: str) -> None:
    from aioray_runner import Runtime

    async with Runtime(supervisors=1) as rt:
        emit("PIDS", [p.pid for p in psutil.Process().children(recursive=True)])
        futures = [rt.submit(nap, directory) for _ in range(CALLS)]
        await asyncio.gather(*futures)


def prefect_job(directory: str) -> None:
    from prefect import flow, task
    from prefect.context import get_run_context

    from aioray_runner import AioRayTaskRunner

    @task
    async def wait_async() -> None:
        await nap(directory)

    @task
    def wait_sync() -> None:
        note(directory, "started")
        time.sleep(3600)  # a thread cannot be cancelled: its run must be marked

    @flow(task_runner=AioRayTaskRunner(init_kwargs={"include_dashboard": False}))
    async def interrupted() -> None:
        emit("FLOW_RUN", str(get_run_context().flow_run.id))  # type: ignore[union-attr]
        emit("PIDS", [p.pid for p in psutil.Process().children(recursive=True)])
        futures: list[Any] = [wait_async.submit() for _ in range(CALLS - SYNC_TASK_RUNS)]
        futures += [wait_sync.submit() for _ in range(SYNC_TASK_RUNS)]
        for future in futures:
            await future

    asyncio.run(interrupted())


if __name__ == "__main__":
    # What a program run from a terminal has. One started in the background by a
    # non-interactive shell (`cmd &`: nohup, some CI runners) inherits SIGINT
    # ignored, and Python then leaves it ignored: Ctrl-C would do nothing at all.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    name, directory = sys.argv[1:3]
    if name == "runtime":
        asyncio.run(runtime_job(directory))
    elif name == "prefect":
        prefect_job(directory)
    else:
        raise SystemExit(f"unknown script {name!r}")
