"""``aioray-runner status`` and the supervisors' Ray metrics, seen from another process.

A runtime in this process (on the session's Ray) runs a known workload; the
command runs as a separate process that joins the same Ray by its GCS address,
as a user's shell would, and must count it exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import ray

from aioray_runner import Runtime
from tests._support import free_port, short_temp_dir, started_ray_head, wait_until

pytestmark = pytest.mark.anyio


def status(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # a driver joining sends the token
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "aioray_runner", "status", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def gcs_address() -> str:
    return str(ray.get_runtime_context().gcs_address)


async def sleeper(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


async def fails() -> None:
    raise ValueError("on purpose")


def blocks_while(flag: str, cap: float) -> None:
    end = time.monotonic() + cap
    while os.path.exists(flag) and time.monotonic() < end:
        time.sleep(0.1)


async def blocks_the_loop(flag: str, cap: float = 120.0) -> str:
    blocks_while(flag, cap)  # the mistake the watchdog is for: blocking in async def
    return "done"


def runtime_in(report: dict[str, Any], name_prefix: str) -> dict[str, Any]:
    found = [r for r in report["runtimes"] if r["runtime"].startswith(name_prefix)]
    assert len(found) == 1, report
    return found[0]


async def test_status_counts_a_known_workload_from_another_process(ray_session: None) -> None:
    async with Runtime(supervisors=2, name="status-test") as rt:
        done = [rt.submit(sleeper, 0.01) for _ in range(10)]
        failed = [rt.submit(fails) for _ in range(3)]
        for future in done:
            assert await future == "slept"
        for future in failed:
            with pytest.raises(ValueError):
                await future
        running = [rt.submit(sleeper, 120) for _ in range(300)]
        await wait_until(
            lambda: _running(rt, 300),
            within=60,
        )
        out = await asyncio.to_thread(status, "--json", "--address", gcs_address())
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["schema"] == 1
        runtime = runtime_in(report, "status-test-")
        assert runtime["totals"]["running"] == 300
        assert runtime["totals"]["finished"] == 10
        assert runtime["totals"]["failed"] == 3
        supervisors = runtime["supervisors"]
        assert sorted(s["index"] for s in supervisors) == [0, 1]
        pids = {info["pid"] for info in rt.supervisor_info()}
        assert {s["pid"] for s in supervisors} == pids
        oldest = [c for s in supervisors for c in s["oldest_running"]]
        assert oldest and {c["function"] for c in oldest} == {"sleeper"}
        assert all(c["label"].startswith("sleeper#") and c["age_s"] >= 0 for c in oldest)
        assert all(s["loop_lag_s"] is not None for s in supervisors)
        # The text form says the same for a person.
        text = await asyncio.to_thread(status, "--address", gcs_address())
        assert text.returncode == 0, text.stderr
        assert "300 running" in text.stdout and "3 failed" in text.stdout, text.stdout
        for future in running:
            future.cancel()


async def _running(rt: Runtime, count: int) -> bool:
    return sum(s["running"] for s in await rt.stats()) >= count


async def test_status_names_the_call_that_blocks_a_loop_while_it_blocks(
    ray_session: None, tmp_path: Path
) -> None:
    flag = tmp_path / "blocking"  # the call blocks its loop until this file is gone
    flag.touch()
    async with Runtime(supervisors=1, name="blocked-test", blocked_loop_threshold=0.2) as rt:
        stuck = rt.submit(blocks_the_loop, str(flag))
        try:
            await _names_the_blocked_call(stuck.label)
        finally:
            flag.unlink(missing_ok=True)  # the call returns: nothing waits for a stuck loop
        assert await stuck == "done"


async def _names_the_blocked_call(label: str) -> None:
    """``status`` from another process names the call ``label``, blocking its loop now."""
    await asyncio.sleep(2.0)  # into the stall (joining takes the status a few seconds too)
    # Read until the watchdog's verdict names the code: the supervisor may still be
    # importing this module (unpickling the function: seconds on a loaded machine,
    # blocked or not, by no call), or its first samples may say it got no CPU.
    reads = []
    for _ in range(5):
        out = await asyncio.to_thread(
            status, "--json", "--address", gcs_address(), "--timeout", "5"
        )
        assert out.returncode == 0, out.stderr
        (supervisor,) = runtime_in(json.loads(out.stdout), "blocked-test-")["supervisors"]
        reads.append(supervisor["blocked_now"])  # it answers while its loop is stuck
        if reads[-1] is not None and reads[-1]["cause"] == "blocking call":
            break
    blocked = reads[-1]
    assert blocked is not None and blocked["cause"] == "blocking call", reads
    assert [c["label"] for c in supervisor["oldest_running"]] == [label]
    assert blocked["where"].startswith("blocks_while (") and blocked["seconds"] > 0.2, blocked
    # The call, as the watching thread last mapped the loop's task to it (once in
    # five runs here it had not: the frame above still names the code).
    assert blocked["calls"] in ([label], []), blocked
    text = await asyncio.to_thread(status, "--address", gcs_address(), "--timeout", "5")
    assert "BLOCKED: supervisor 0's event loop" in text.stdout, text.stdout


# A program of a user's: a runtime on the cluster at argv[1], 400 calls that sleep.
PROGRAM = """
import asyncio, sys
from aioray_runner import Runtime

async def crawl(seconds):
    await asyncio.sleep(seconds)

async def main():
    async with Runtime(sys.argv[1], supervisors=2, name="crawler") as rt:
        futures = [rt.submit(crawl, 300) for _ in range(400)]
        print("submitted", flush=True)
        await asyncio.sleep(300)

asyncio.run(main())
"""


@pytest.mark.cluster
def test_status_of_a_program_on_a_ray_start_cluster() -> None:
    temp_dir = short_temp_dir("st")
    gcs = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "GRPC_ENABLE_FORK_SUPPORT": "0"}
    env.pop("RAY_ADDRESS", None)
    ports = (f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}")
    program = None
    try:
        with started_ray_head(env, temp_dir, *ports, gcs_port=int(gcs.split(":")[1])):
            program = subprocess.Popen(
                [sys.executable, "-c", PROGRAM, gcs],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert program.stdout is not None
            # Bounded: the runtime's start is (120 s), and a program that fails exits.
            said = []
            while not said or said[-1] not in ("submitted\n", ""):  # "": it ended
                said.append(program.stdout.readline())
            assert said[-1] == "submitted\n", "".join(said)
            deadline = time.monotonic() + 90
            while True:
                out = status("--json", "--address", gcs)
                assert out.returncode == 0, out.stderr
                found = [
                    r for r in json.loads(out.stdout)["runtimes"] if "crawler-" in r["runtime"]
                ]
                if found and found[0]["totals"]["running"] == 400:
                    break
                assert time.monotonic() < deadline, out.stdout
                time.sleep(2)
            (runtime,) = found
            assert len(runtime["supervisors"]) == 2
            names = {c["function"] for s in runtime["supervisors"] for c in s["oldest_running"]}
            assert names == {"crawl"}
    finally:
        if program is not None:
            program.kill()
            program.wait(30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_status_of_an_address_with_nothing_there_fails_fast() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    out = status("--address", address, timeout=60)
    took = time.monotonic() - started
    assert out.returncode == 1
    assert f"nothing answers at {address}" in out.stderr, out.stderr
    assert took < 30, f"took {took:.0f} s"  # the probe's bound, not Ray's minutes of retries


def _metrics_text() -> str:
    ports = {node["MetricsExportPort"] for node in ray.nodes() if node.get("Alive")}
    texts = []
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            texts.append(response.read().decode())
    return "\n".join(texts)


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        tagged, _, value = line.rpartition(" ")
        if all(f'{key}="{want}"' in tagged for key, want in labels.items()):
            total += float(value)
    return total


async def test_ray_metrics_carry_a_known_workload(ray_session: None) -> None:
    async with Runtime(supervisors=1, name="metrics-test") as rt:
        runtime = rt.supervisor_info()[0]["runtime"]
        for future in [rt.submit(sleeper, 0.01) for _ in range(25)]:
            await future
        for future in [rt.submit(fails) for _ in range(4)]:
            with pytest.raises(ValueError):
                await future

        def counted() -> bool:
            text = _metrics_text()
            finished = _sample(text, "ray_aioray_calls_total", runtime=runtime, outcome="finished")
            failed = _sample(text, "ray_aioray_calls_total", runtime=runtime, outcome="failed")
            return finished == 25 and failed == 4

        deadline = time.monotonic() + 90
        while not await asyncio.to_thread(counted):
            assert time.monotonic() < deadline, _metrics_text()[-3000:]
            await asyncio.sleep(2)
        text = await asyncio.to_thread(_metrics_text)
        # Every call that ran, failed ones too.
        assert _sample(text, "ray_aioray_call_seconds_count", runtime=runtime) == 29
        assert "ray_aioray_calls_in_phase{" in text
