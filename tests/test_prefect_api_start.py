"""Prefect's temporary API: the wait it gets, and what a user reads when it is late.

Each case runs in a child process of its own (Prefect's settings and its
temporary server are per process), against a real temporary server; no Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

READ_WAITS = """
import json
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as T
before = T.value()
from aioray_runner import AioRayTaskRunner
AioRayTaskRunner()
from aioray_runner._prefect.api import start_timeout
print(json.dumps({"before": before, "after": T.value(), "start_timeout": start_timeout()}))
"""

LATE_SERVER = """
from prefect.server.api.server import SubprocessASGIServer
from aioray_runner._prefect.api import start_temporary_api
lines = []
try:
    start_temporary_api(announce=lines.append)
except RuntimeError as exc:
    print("ERROR:", exc)
print("ANNOUNCED:", lines)
print("STOPPED:", SubprocessASGIServer().server_process is None)
"""


def _run(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", VARIABLE)}
    full.update(PREFECT_HOME=str(tmp_path), PREFECT_SERVER_ANALYTICS_ENABLED="false", **env)
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=full
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_creating_the_runner_gives_the_temporary_api_time_to_start(tmp_path: Path) -> None:
    waits = json.loads(_run(READ_WAITS, tmp_path).stdout.splitlines()[-1])
    assert waits["before"] == 20  # Prefect's own default
    assert waits["after"] == waits["start_timeout"] == 120


@pytest.mark.parametrize(
    "env",
    [{VARIABLE: "45"}, {"PREFECT_API_URL": "http://127.0.0.1:9/api"}],
    ids=["the user's own wait", "an API of the user's own"],
)
def test_a_choice_of_the_users_stands(env: dict[str, str], tmp_path: Path) -> None:
    waits = json.loads(_run(READ_WAITS, tmp_path, **env).stdout.splitlines()[-1])
    assert waits["after"] == waits["before"]
    if VARIABLE in env:
        assert waits["start_timeout"] == 45


def test_a_late_temporary_api_fails_with_what_to_do_and_is_stopped(tmp_path: Path) -> None:
    # One second is less than any first start measured (12 s and more): late.
    out = _run(LATE_SERVER, tmp_path, **{VARIABLE: "1"}).stdout
    assert "ERROR: Prefect's temporary API server did not answer within 1 s" in out, out
    assert f"{VARIABLE}=300" in out and "prefect server start" in out and "PREFECT_API_URL" in out
    assert "ANNOUNCED: [\"Starting Prefect's temporary API server (up to 1 s" in out, out
    assert "STOPPED: True" in out, out
