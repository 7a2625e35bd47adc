"""A truthful start: ``address=None`` never joins someone else's Ray by accident.

A ``ray start --head`` cluster runs beside the test (1 CPU, so it is easy to tell
from a temporary local instance, which gets this machine's cores). Each case runs
``Runtime`` in a fresh Python process, since the test session's own process has
Ray initialized already.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import short_temp_dir, started_ray_head

REPO = Path(__file__).resolve().parent.parent

START = """
import json, logging, sys
import ray
from aioray_runner import Runtime
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="LOG %(message)s")
init_kwargs = json.loads(sys.argv[1])
with Runtime(init_kwargs=init_kwargs) as rt:
    value = rt.submit(abs, -3).result(timeout=60)
    print("RESULT " + json.dumps({
        "cpus": ray.cluster_resources().get("CPU"),
        "owns_ray": rt.owns_ray,
        "value": value,
    }), flush=True)
"""


@pytest.fixture(scope="module")
def other_cluster() -> Iterator[tuple[str, str]]:
    """Somebody else's ``ray start --head`` (1 CPU); yields (client address, temp dir)."""
    temp_dir = short_temp_dir("oc")
    try:
        with started_ray_head(_env(), temp_dir, num_cpus=1) as address:
            yield address, temp_dir
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # As tests/test_prefect_cluster.py: the head keeps Ray 2.60's token
        # authentication on (ignored by older Ray), and its client proxy must not
        # lose the server it forks (ray-project/ray#63202).
        RAY_AUTH_MODE="token",
        GRPC_ENABLE_FORK_SUPPORT="0",
    )
    env.update(extra)
    return env


def _start(init_kwargs: dict[str, Any], env: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", START, json.dumps(init_kwargs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, (
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    )
    logs = [
        line.removeprefix("LOG ") for line in proc.stderr.splitlines() if line.startswith("LOG ")
    ]
    return json.loads(results[0].removeprefix("RESULT ")), logs


@pytest.mark.cluster
def test_no_address_starts_a_temporary_instance_even_beside_a_cluster(
    other_cluster: tuple[str, str],
) -> None:
    _, temp_dir = other_cluster
    # Point Ray's own discovery at the other cluster's session files: plain
    # ray.init() would join it (that is what Runtime() used to do).
    out, logs = _start({"_temp_dir": temp_dir, "num_cpus": 2}, _env())
    assert out["value"] == 3 and out["owns_ray"] is True
    assert out["cpus"] == 2.0, out  # its own instance, not the 1-CPU cluster
    said = [line for line in logs if line.startswith("Started a temporary local Ray instance")]
    assert len(said) == 1, logs
    assert "2 CPUs" in said[0] and "GCS 127.0.0.1:" in said[0]
    assert not any("Joined" in line or "Joining" in line for line in logs), logs


@pytest.mark.cluster
def test_ray_address_in_the_environment_is_joined_and_said(
    other_cluster: tuple[str, str],
) -> None:
    address, _ = other_cluster
    out, logs = _start({}, _env(RAY_ADDRESS=address))
    assert out["value"] == 3
    assert out["cpus"] == 1.0, out  # the other cluster's one CPU
    assert f"Joining the Ray cluster at {address} (from RAY_ADDRESS)" in logs, logs
    joined = [line for line in logs if line.startswith(f"Joined the Ray cluster at {address}")]
    assert len(joined) == 1 and "1 node, 1 CPU" in joined[0], logs
