"""Ray itself, or a node, going away: every call ends promptly, nothing is left behind.

Each scenario runs in a process of its own (``tests/_fault_scripts.py``) with a
Ray of its own: the GCS server or the raylet SIGKILLed under a ``Runtime`` and
under a Prefect flow, and a node removed from a two-node
``ray.cluster_utils.Cluster``. Afterwards no process the scenario started may be
alive (Ray's, or Prefect's temporary API server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent


def run_scenario(*args: str, timeout: float = 240) -> dict[str, Any]:
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "PREFECT_API_URL"):  # a Ray and an API of its own
        env.pop(name, None)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    started = time.monotonic()
    # A session of its own, so that whatever happens every process it started
    # can be stopped (Ray's, Prefect's temporary server, a Cluster's nodes).
    child = subprocess.Popen(
        [sys.executable, "-m", "tests._fault_scripts", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        return _outcome(child, started, timeout)
    finally:
        # Only now, after the checks: stop whatever a failed scenario left.
        _stop_session(child.pid)


def _outcome(child: subprocess.Popen[str], started: float, timeout: float) -> dict[str, Any]:
    stdout, stderr = child.communicate(timeout=timeout)
    took = time.monotonic() - started
    found = {
        kind: json.loads(line.removeprefix(f"{kind} "))
        for line in stdout.splitlines()
        for kind in ("PIDS", "RESULT")
        if line.startswith(f"{kind} ")
    }
    assert child.returncode == 0 and "RESULT" in found, (
        f"exit code {child.returncode}\n--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-6000:]}"
    )
    # Nothing the scenario started outlives it (Ray's processes, Prefect's server).
    pids = found.get("PIDS", {}).get("pids", [])
    deadline = time.monotonic() + 15
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and not _is_zombie(p)]
        time.sleep(0.2)
    assert not alive, [_describe(p) for p in alive]
    out: dict[str, Any] = found["RESULT"]
    out.update(process_s=took, stderr=stderr, started_pids=pids)
    return out


def _stop_session(sid: int) -> None:
    """SIGKILL every process left in the scenario's session (none, if all went well)."""
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid:
                process.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _describe(pid: int) -> str:
    try:
        return f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:200]}"
    except psutil.Error:
        return str(pid)


@pytest.mark.parametrize("which", ["gcs_server", "raylet"])
def test_ray_killed_under_a_runtime_fails_every_call_at_once(which: str) -> None:
    out = run_scenario("ray-lost", which)
    assert len(out["errors"]) == 20
    assert all(e.startswith("RayLostError") for e in out["errors"]), out["errors"][:2]
    message = out["errors"][0]
    assert which in message and str(out["killed_pid"]) in message and "nap#" in message
    assert out["ended_s"] < 10, out  # a second's probe, not Ray's 60 s
    assert out["closed_s"] < 45, out
    assert out["submit_after"].startswith("RayLostError"), out["submit_after"]
    # A stream in flight ends the same way, after the values it delivered.
    assert out["streamed"] == [0, 1, 2], out["streamed"]
    assert out["stream_error"].startswith("RayLostError"), out["stream_error"]
    assert "Ray went away" in out["stderr"]
    assert out["started_pids"], "the scenario reported no processes to check"


@pytest.mark.slow
def test_ray_killed_under_a_prefect_flow_ends_the_flow_and_its_api(tmp_path: Path) -> None:
    out = run_scenario("prefect-ray-lost")
    assert out["flow_state"] == "COMPLETED", out  # the flow itself returned
    assert out["types"] == ["CRASHED"] * 10, out["types"]
    assert all("Ray went away" in m for m in out["messages"]), out["messages"][:1]
    assert out["ended_s"] < 15, out
    # The process ended well before Ray's own 60 s limit would have killed it,
    # and Prefect's temporary API server went with it (checked by run_scenario).
    assert out["process_s"] < 90, out["process_s"]


@pytest.mark.slow
def test_a_removed_node_ends_its_calls_and_new_work_runs_on_the_other() -> None:
    out = run_scenario("node-lost", timeout=300)
    assert out["lost"] > 0
    assert set(out["kinds"]) == {"SupervisorDiedError"}, out["kinds"]
    assert "died" in out["message"] and "resubmit" in out["message"]
    assert out["ended_s"] < 60, out
    assert out["others_pending"] > 0  # calls on the surviving node were untouched
    assert set(out["after_nodes"]) == {out["head"]}, out["after_nodes"]
