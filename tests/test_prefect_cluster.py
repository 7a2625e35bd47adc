"""The Ray set-ups RayTaskRunner supports, each in a process of its own.

* a temporary local Ray that the runner starts and stops;
* a multi-node ``ray.cluster_utils.Cluster`` (supervisors spread across nodes);
* an existing cluster started with ``ray start --head``, joined as a Ray client.

They cannot share the test session's process (Ray is initialized there, and
Ray client mode cannot live next to it), so each runs
``tests/_prefect_cluster_flows.py`` with ``sys.executable``. Token authentication
stays on: every process finds the token in Ray's default place (``~/.ray``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._support import short_temp_dir, started_ray_head

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent


def _env(api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # the session's Ray, if this process started one
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="token",
        # The Ray client proxy of Ray 2.10/2.40 loses the server it forks for a
        # client more often than not here (ray-project/ray#63202); gRPC's fork
        # handlers are the cause. Users get the same advice in README.md.
        GRPC_ENABLE_FORK_SUPPORT="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def _ray_log_tails(temp_dir: str, pattern: str = "ray_client_server*") -> str:
    """The end of each Ray log matching ``pattern`` under ``temp_dir`` (for failures)."""
    tails = []
    for path in sorted(Path(temp_dir).glob(f"session_2*/logs/{pattern}")):
        text = path.read_text(errors="replace")[-3000:]
        tails.append(f"--- {path.name}\n{text}")
    return "\n".join(tails) or f"(no {pattern} under {temp_dir})"


def run_flow_script(
    api_url: str, *args: str, timeout: float = 240, ray_logs: str | None = None
) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests._prefect_cluster_flows", *args],
        cwd=REPO,
        env=_env(api_url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(lines) == 1, (
        f"exit code {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-6000:]}"
        + (f"\n--- Ray logs\n{_ray_log_tails(ray_logs)}" if ray_logs else "")
    )
    out: dict[str, Any] = json.loads(lines[0].removeprefix("RESULT "))
    out["stderr"] = proc.stderr
    return out


def _check_ran_everywhere(out: dict[str, Any]) -> None:
    assert out["state"] == "COMPLETED", out
    supervisor_pids = {s["pid"] for s in out["supervisors"]}
    assert sorted(r["i"] for r in out["async"]) == list(range(len(out["async"])))
    assert {r["pid"] for r in out["async"]} <= supervisor_pids
    # Sync tasks: in threads of the supervisors, or (with Ray options) Ray tasks.
    assert sorted(r["i"] for r in out["sync"]) == [0, 1, 2, 3]
    assert {r["pid"] for r in out["sync"]} <= supervisor_pids
    assert sorted(r["i"] for r in out["sync_ray_tasks"]) == [0, 1]
    assert all(r["actor"] is None for r in out["sync_ray_tasks"])  # Ray tasks, not actors
    assert not {r["pid"] for r in out["sync_ray_tasks"]} & supervisor_pids


def test_temporary_local_ray_started_and_stopped_by_the_runner(prefect_api: str) -> None:
    temp_dir = short_temp_dir("rl")
    try:
        out = run_flow_script(prefect_api, "local", temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert out["ray_initialized_before"] is False
    _check_ran_everywhere(out)
    assert out["ray_initialized_in_flow"] is True
    assert out["owns_ray"] is True
    # A Ray of its own (init_kwargs reached ray.init), shut down after the flow.
    assert out["session_dir"].startswith(temp_dir)
    assert len(out["supervisors"]) == 1  # one per node by default
    assert out["ray_initialized_after"] is False


def test_multi_node_cluster_spreads_supervisors(prefect_api: str) -> None:
    out = run_flow_script(prefect_api, "cluster")
    _check_ran_everywhere(out)
    assert len(out["cluster_nodes"]) == 2
    assert out["alive_nodes"] == out["cluster_nodes"]
    supervisor_nodes = [s["node_id"] for s in out["supervisors"]]
    assert len(supervisor_nodes) == 2
    assert set(supervisor_nodes) == set(out["cluster_nodes"])  # one on each node
    # Async task runs were balanced over both supervisors, so both nodes ran some.
    assert {r["node"] for r in out["async"]} == set(out["cluster_nodes"])
    assert out["owns_ray"] is True
    assert out["ray_initialized_after"] is False


@dataclass(frozen=True)
class RayHead:
    address: str  # ray://127.0.0.1:PORT
    temp_dir: str  # its session and logs, for failure messages


@pytest.fixture
def ray_head(prefect_api: str) -> Iterator[RayHead]:
    """``ray start --head --block`` in a process group of its own.

    Stopped by signalling that process group only (``ray stop`` would stop every
    Ray on the machine, the test session's own included).
    """
    temp_dir = short_temp_dir("rh")
    try:
        with started_ray_head(_env(prefect_api), temp_dir, num_cpus=2) as address:
            yield RayHead(address, temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_existing_cluster_through_ray_client(prefect_api: str, ray_head: RayHead) -> None:
    out = run_flow_script(prefect_api, "client", ray_head.address, ray_logs=ray_head.temp_dir)
    assert out["ray_initialized_before"] is False
    _check_ran_everywhere(out)
    assert out["owns_ray"] is True  # it connected, so it disconnects
    assert len(out["supervisors"]) == 1
    assert len(out["alive_nodes"]) == 1
    assert out["ray_initialized_after"] is False
    # Closing leaves the Ray client quiet (a cancelled wait once killed its data
    # thread on Ray 2.10 and 2.40 with an InvalidStateError).
    assert "Traceback" not in out["stderr"], out["stderr"][-3000:]
