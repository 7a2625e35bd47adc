"""Shared by tests/ and tests_trio/: the session's Ray, shared runtimes, helpers.

The fixtures are imported into ``tests/conftest.py`` and ``tests_trio/conftest.py``.
Everything else here also runs *inside* supervisors: ``tests`` is a package and
Ray puts the driver's working directory on its workers' ``sys.path``, so
functions defined in test modules (and this module's shared state) are imported
by reference there.
"""

from __future__ import annotations

import os

# Must be set before Ray is imported (keeps a local Ray on 127.0.0.1).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
import ray

from aioray_runner import Runtime

#: A custom Ray resource the session's Ray has (4 units).
TEST_RESOURCE = "aioray_test_slot"

# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole pytest session (reused if already initialized)."""
    started = not ray.is_initialized()
    if started:
        # The custom resource lets the Prefect tests check that `remote_options`
        # reaches Ray (tests/test_prefect_runner.py).
        ray.init(address="local", num_cpus=2, include_dashboard=False, resources={TEST_RESOURCE: 4})
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def runtime(ray_session: None) -> Iterator[Runtime]:
    """A default Runtime shared by the tests that do not need their own."""
    rt = Runtime()
    rt.start()
    yield rt
    rt.close(wait=False)


# -- helpers that run in supervisors ---------------------------------------------------

# State shared by calls running in the same supervisor process, keyed by a token
# that each test makes up, so tests sharing a supervisor do not see each other.
_lock = threading.Lock()
_gauges: dict[str, list[int]] = {}  # token -> [running now, most at once]
_events: dict[str, threading.Event] = {}
_started: dict[str, bool] = {}


def _event(token: str) -> threading.Event:
    with _lock:
        return _events.setdefault(token, threading.Event())


async def gauged_sleep(token: str, delay: float, value: int) -> int:
    """Count how many calls with this token run at once in this process."""
    with _lock:
        gauge = _gauges.setdefault(token, [0, 0])
        gauge[0] += 1
        gauge[1] = max(gauge[1], gauge[0])
    try:
        await asyncio.sleep(delay)
    finally:
        with _lock:
            gauge[0] -= 1
    return value


def gauged_sleep_sync(token: str, delay: float, value: int) -> int:
    """``gauged_sleep`` for threads: count how many run at once in this process."""
    with _lock:
        gauge = _gauges.setdefault(token, [0, 0])
        gauge[0] += 1
        gauge[1] = max(gauge[1], gauge[0])
    try:
        time.sleep(delay)
    finally:
        with _lock:
            gauge[0] -= 1
    return value


def gauge_peak(token: str) -> int:
    """The most calls with this token that ran at once in this process."""
    with _lock:
        return _gauges.get(token, [0, 0])[1]


def block_until_set(token: str, limit_s: float) -> tuple[str, bool]:
    """A plain function that blocks its thread until ``set_when_started`` runs."""
    _started[token] = True
    was_set = _event(token).wait(limit_s)
    return threading.current_thread().name, was_set


async def set_when_started(token: str, limit_s: float) -> bool:
    """Set the event once ``block_until_set`` is blocking (needs a free event loop)."""
    deadline = time.monotonic() + limit_s
    while not _started.get(token):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    _event(token).set()
    return True


# -- caller-side helpers -----------------------------------------------------------------


class Heartbeat:
    """Ticks on the caller's loop (asyncio or trio); shows the loop stayed free."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.ticks: list[float] = []

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            self.ticks.append(time.monotonic())

    def ticks_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.ticks if start <= t <= end)

    def assert_kept_ticking(self, start: float, end: float) -> None:
        """At least a tenth of the ticks the window had room for (a ratio, not a speed).

        A loop blocked while it waits ticks about never. A free one still spends
        much of the window resolving the futures it awaits (10,000 in the scale
        test) and shares the GIL with the runtime's I/O thread: on a loaded 2-core
        CI machine 18% of the room was seen.
        """
        room = (end - start) / self.interval
        ticks = self.ticks_between(start, end)
        assert ticks >= 3, f"heartbeat ticked {ticks} times in {end - start:.2f} s"
        assert ticks >= 0.1 * room, f"heartbeat ticked {ticks} times, room for {room:.0f}"


async def submit_all_with_heartbeat(
    runtime: Runtime, fn: Callable[..., Any], n: int, waiters: int = 20
) -> list[Any]:
    """Results of ``fn(i)`` for ``i < n``, awaited by ``waiters`` tasks of the caller's
    library (asyncio or trio); fails if the caller's heartbeat stalled meanwhile."""
    heartbeat = Heartbeat()
    results: list[Any] = [None] * n
    chunk = max(1, n // waiters)
    async with anyio.create_task_group() as beating:
        beating.start_soon(heartbeat.run)
        await anyio.sleep(0.05)
        futures = [runtime.submit(fn, i) for i in range(n)]
        start = time.monotonic()

        async def collect(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                results[i] = await futures[i]

        async with anyio.create_task_group() as collectors:
            for lo in range(0, n, chunk):
                collectors.start_soon(collect, lo, min(n, lo + chunk))
        end = time.monotonic()
        beating.cancel_scope.cancel()
    heartbeat.assert_kept_ticking(start, end)
    return results


def spin_for(seconds: float) -> int:
    """Burn ``seconds`` of this thread's CPU time (however long a loaded machine takes)."""
    end, turns = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        turns += 1
    return turns


async def wait_until(predicate, within: float = 20.0, interval: float = 0.02) -> None:
    """Poll ``predicate()`` (sync or async) until true; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await anyio.sleep(interval)


# -- a `ray start --head` cluster of the test's own ---------------------------------------


def short_temp_dir(prefix: str) -> str:
    """A new temporary directory with a short path (Ray puts Unix sockets in it)."""
    import tempfile

    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def started_ray_head(
    env: dict[str, str],
    temp_dir: str,
    *extra_args: str,
    num_cpus: int = 2,
    gcs_port: int | None = None,
) -> Iterator[str]:
    """``ray start --head --block`` on 127.0.0.1, in a process group of its own.

    Yields its Ray client address (``ray://127.0.0.1:PORT``) once the client
    server listens; its GCS listens on ``gcs_port`` (a free port if not given).
    Stopped by signalling that process group only: ``ray stop`` would stop every
    Ray on the machine, the test session's own included. The head's output is in
    ``temp_dir/ray-start.log``.
    """
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    client_port = free_port()
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs_port or free_port()}",
            f"--ray-client-server-port={client_port}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            *extra_args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, (Path(temp_dir) / "ray-start.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", client_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray client server never listened"
                time.sleep(0.5)
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)  # what is left of the group it started
            except ProcessLookupError:
                break
            time.sleep(2)
        log.close()


class CollectRecords(logging.Handler):
    """A logging handler that keeps every record it is given (in the test's process)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
