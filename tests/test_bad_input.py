"""Bad input gets a named error at once, and other calls keep running.

One test per row of the "Bad input" table in docs/failures.md. Connection
failures run in a process of their own: the test session's process has Ray
initialized, and a runtime there uses it instead of connecting anywhere.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from aioray_runner import AioRayTaskRunner, InvalidCallError, Runtime
from tests._support import free_port, short_temp_dir, started_ray_head

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent


async def fetch(i: int) -> int:
    await asyncio.sleep(0)
    return i


async def slow(value: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return value


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


async def async_numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


# -- what submit is given ----------------------------------------------------------------


async def test_not_callable_is_refused_naming_its_type(runtime: Runtime) -> None:
    with pytest.raises(InvalidCallError) as info:
        runtime.submit(1234567)  # type: ignore[call-overload]
    message = str(info.value)
    assert "expects a function" in message and "type int" in message
    assert "1234567" not in message  # the type, never the value (docs/failures.md)
    assert isinstance(info.value, TypeError)
    with pytest.raises(InvalidCallError, match="pass the function itself"):
        runtime.submit("fetch", 1)  # type: ignore[call-overload]


async def test_coroutine_object_is_refused_and_closed(runtime: Runtime) -> None:
    coro = fetch(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InvalidCallError) as info:
            runtime.submit(coro)  # type: ignore[call-overload]
        del coro
        gc.collect()
    assert "submit(fetch, *args), not submit(fetch(*args))" in str(info.value)
    assert "module level" not in str(info.value)  # the old, wrong advice
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_generator_function_is_refused(runtime: Runtime) -> None:
    with pytest.raises(InvalidCallError) as info:
        runtime.submit(numbers, 3)
    assert "numbers is a generator function" in str(info.value)
    assert "rt.stream(numbers, *args)" in str(info.value)  # its values as they are made
    assert "returns a list" in str(info.value)  # or all of them as one result


async def test_async_generator_function_is_refused(runtime: Runtime) -> None:
    with pytest.raises(InvalidCallError) as info:
        runtime.submit(async_numbers, 3)
    assert "async_numbers is an async generator function" in str(info.value)
    assert "rt.stream(async_numbers, *args)" in str(info.value)
    assert "async def collect" in str(info.value)


async def test_generator_objects_are_refused(runtime: Runtime) -> None:
    with pytest.raises(InvalidCallError, match=r"generator object \(numbers\(\.\.\.\)"):
        runtime.submit(numbers(3))  # type: ignore[call-overload]
    agen = async_numbers(3)
    with pytest.raises(InvalidCallError, match=r"async generator object \(async_numbers"):
        runtime.submit(agen)  # type: ignore[call-overload]
    await agen.aclose()


async def test_every_way_in_refuses_the_same(runtime: Runtime) -> None:
    """map, broadcast and options().submit go through the same check as submit."""
    with pytest.raises(InvalidCallError, match="type int"):
        runtime.map(42, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidCallError, match="generator function"):
        runtime.broadcast(numbers, 1)
    # No options: the default group, so no supervisor is started for this test.
    with pytest.raises(InvalidCallError, match="type NoneType"):
        runtime.options().submit(None)  # type: ignore[arg-type]


async def test_a_bad_submit_does_not_disturb_calls_in_flight(runtime: Runtime) -> None:
    in_flight = [runtime.submit(slow, f"v{i}", 0.3) for i in range(20)]
    for bad in (42, fetch(0), numbers, async_numbers):
        with pytest.raises(InvalidCallError):
            runtime.submit(bad)  # type: ignore[call-overload]
    after = runtime.submit(slow, "after", 0)
    assert [await f for f in in_flight] == [f"v{i}" for i in range(20)]
    assert await after == "after"


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "guess"), [("Trio", "trio"), ("anyio", "asyncio"), ("asyncoi", "asyncio")]
)
def test_wrong_backend_lists_the_valid_ones_and_guesses(backend: str, guess: str) -> None:
    with pytest.raises(ValueError) as info:
        Runtime(backend=backend)  # type: ignore[arg-type]
    message = str(info.value)
    assert "'asyncio' or 'trio'" in message and repr(backend) in message
    assert f"did you mean {guess!r}?" in message


@pytest.mark.parametrize(
    ("setting", "value", "error", "says"),
    [
        ("supervisors", 0, ValueError, "supervisors must be at least 1"),
        ("supervisors", "2", TypeError, "supervisors must be a whole number"),
        ("max_concurrency", -5, ValueError, "max_concurrency must be at least 1"),
        ("max_concurrency", 2.5, TypeError, "max_concurrency must be a whole number"),
        ("threads", 0, ValueError, "threads must be at least 1"),
        ("threads", True, TypeError, "threads must be a whole number"),
        ("start_timeout", 0, ValueError, "start_timeout must be a number of seconds above 0"),
        ("start_timeout", float("nan"), ValueError, "start_timeout must be a number"),
        ("start_timeout", "60", TypeError, "start_timeout must be a number of seconds"),
        ("blocked_loop_threshold", "0.5", TypeError, "blocked_loop_threshold must be a number"),
        ("blocked_loop_threshold", -1, ValueError, "blocked_loop_threshold must be at least"),
        ("blocked_loop_threshold", 0.001, ValueError, "blocked_loop_threshold must be at least"),
    ],
)
def test_bad_numbers_are_refused_naming_the_setting(
    setting: str, value: Any, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        Runtime(**{setting: value})


@pytest.mark.parametrize(
    ("reruns", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_bad_reruns_are_refused(runtime: Runtime, reruns: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="reruns must be"):
        runtime.submit_call(len, ("abc",), reruns=reruns)
    assert runtime.submit_call(len, ("abc",), reruns=1).result(timeout=60) == 3


@pytest.mark.parametrize(
    ("address", "error", "says"),
    [
        ("localhost", ValueError, "'localhost' is not valid"),
        ("ray://head", ValueError, "'ray://head' is not valid"),
        ("127.0.0.1:99999", ValueError, "is not valid"),
        ("http://127.0.0.1:8265", ValueError, "web address"),
        (10001, TypeError, "address must be a string or None"),
    ],
)
def test_malformed_address_is_refused_with_the_valid_forms(
    address: Any, error: type[Exception], says: str
) -> None:
    for make in (Runtime, AioRayTaskRunner):  # the runner refuses it where it is written
        with pytest.raises(error, match=says) as info:
            make(address=address)
        assert "ray://host:port" in str(info.value) and "'auto'" in str(info.value)


# -- where Ray is ----------------------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    return free_port()


CONNECT = """
import json, sys, time
from aioray_runner import Runtime
started = time.monotonic()
try:
    Runtime(address=sys.argv[1]).start()
    print("RESULT " + json.dumps({"error": None}))
except Exception as exc:
    print("RESULT " + json.dumps({
        "error": type(exc).__name__, "message": str(exc),
        "elapsed": time.monotonic() - started,
        "chained": exc.__cause__ is not None or (
            exc.__context__ is not None and not exc.__suppress_context__),
    }), flush=True)
    raise
"""


def _run(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    out = json.loads(lines[0].removeprefix("RESULT "))
    out["stderr"] = proc.stderr
    return out


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


def _traceback_frames(stderr: str) -> int:
    """Frames in the last traceback (lines differ: 3.13 also prints whole statements)."""
    start = stderr.rfind("Traceback (most recent call last)")
    if start < 0:
        return 0
    return sum(line.startswith('  File "') for line in stderr[start:].splitlines())


@pytest.mark.parametrize(("scheme", "port_hint"), [("ray://", "10001"), ("", "6379")])
def test_unreachable_address_fails_at_once_naming_it(scheme: str, port_hint: str) -> None:
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    out = _run(CONNECT, address)
    assert out["error"] == "ConnectionError"
    assert out["elapsed"] < 15, out  # ray.init alone takes 20-30 s to give up
    assert address in out["message"] and port_hint in out["message"]
    assert "ray start --head" in out["message"]
    assert not out["chained"]
    assert _traceback_frames(out["stderr"]) <= 5, out["stderr"]  # no chain of Ray internals


FLOW = """
import asyncio, json, sys, time
from prefect import flow, task
from aioray_runner import AioRayTaskRunner

@task
async def one() -> int:
    return 1

@flow(task_runner=AioRayTaskRunner(address=sys.argv[1]))
async def pipeline() -> int:
    return await one.submit()

started = time.monotonic()
try:
    asyncio.run(pipeline())
    print("RESULT " + json.dumps({"error": None}))
except Exception as exc:
    print("RESULT " + json.dumps({
        "error": type(exc).__name__, "message": str(exc),
        "elapsed": time.monotonic() - started}), flush=True)
"""


def test_unreachable_address_fails_a_prefect_flow_at_once(prefect_api: str) -> None:
    address = f"ray://127.0.0.1:{_closed_port()}"
    out = _run(FLOW, address, env=_env(PREFECT_API_URL=prefect_api), timeout=180)
    assert out["error"] == "ConnectionError", out
    assert out["elapsed"] < 15, out
    assert address in out["message"] and "10001" in out["message"]


# -- a Ray client without the cluster's token ---------------------------------------------


@pytest.fixture
def token_cluster() -> Iterator[str]:
    """``ray start --head`` with token authentication, its token in its own HOME.

    Stopped by signalling its own process group (``ray stop`` would stop every
    Ray on the machine). Yields its Ray client address.
    """
    temp_dir = short_temp_dir("tk")
    env = _env(
        HOME=temp_dir,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=uuid.uuid4().hex + uuid.uuid4().hex,
        GRPC_ENABLE_FORK_SUPPORT="0",  # see tests/test_prefect_cluster.py
    )
    # Free ports, so a Ray that someone else runs here is not disturbed.
    ports = (f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}")
    try:
        with started_ray_head(env, temp_dir, *ports, num_cpus=1) as address:
            yield address
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.cluster
@pytest.mark.skipif(
    not hasattr(ray.exceptions, "AuthenticationError"),
    reason="Ray before 2.52 has no token authentication",
)
def test_client_without_the_token_is_told_to_set_it(token_cluster: str) -> None:
    client_home = tempfile.mkdtemp(prefix="tc", dir="/tmp")  # no ~/.ray/auth_token there
    try:
        env = _env(HOME=client_home)
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(name, None)
        out = _run(CONNECT, token_cluster, env=env, timeout=180)
    finally:
        shutil.rmtree(client_home, ignore_errors=True)
    assert out["error"] == "ConnectionError", out
    message = out["message"]
    assert token_cluster in message
    assert "RAY_AUTH_MODE=token" in message and "~/.ray/auth_token" in message
    assert "RAY_AUTH_TOKEN" in message
    assert not out["chained"]
    # The reason is given before Ray's 30 s wait, too.
    assert "RAY_AUTH_MODE is not set in this process" in out["stderr"]
