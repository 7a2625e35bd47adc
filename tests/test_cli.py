"""The ``aioray-runner`` command: real runs, small sizes.

Each test runs the command in a child process (``python -m aioray_runner``, which
is what the console script calls), as a user would, with its own temporary Ray
(and Prefect API) where the command starts one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import ray

ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, Ray kept local, no Prefect telemetry, no RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL")}
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        **extra,
    )
    return env


def cli(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioray_runner", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(**env),
        cwd=ROOT,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the console script -------------------------------------------------------------------


def test_the_console_script_runs_the_cli_main() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"aioray-runner": "aioray_runner.cli:main"}
    from aioray_runner import __version__
    from aioray_runner.cli import main

    assert callable(main)
    out = cli("--version", timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"aioray-runner {__version__}"


def test_bad_arguments_exit_2_naming_the_argument() -> None:
    out = cli("bench", "--runners", "aioray,nonesuch", timeout=60)
    assert out.returncode == 2
    assert "argument --runners: unknown runner(s) nonesuch; choose from aioray," in out.stderr
    assert "threadpool" in out.stderr  # the valid ones are listed
    out = cli("demo", "--pages", "0", timeout=60)
    assert out.returncode == 2
    assert "--pages: must be at least 1, not 0" in out.stderr


# -- bench --------------------------------------------------------------------------------------


CORE = ["core.trivial", "core.io", "core.latency"]
PREFECT = ["prefect.fanout", "prefect.dag", "prefect.cpu"]


def check_figures(result: dict[str, Any], scenarios: dict[str, set[str]]) -> None:
    """Every scenario has every runner, each with its time per task and ratio to aioray."""
    assert list(result["scenarios"]) == list(scenarios)
    for scenario, runners in scenarios.items():
        entries = result["scenarios"][scenario]["runners"]
        assert set(entries) == runners, scenario
        for runner, entry in entries.items():
            assert "error" not in entry, (scenario, runner, entry)
            assert entry["n"] >= 1
            assert entry["per_task_ms"] > 0, (scenario, runner)
            assert entry["ratio"] == pytest.approx(
                entry["per_task_ms"] / entries["aioray"]["per_task_ms"]
            )
        assert entries["aioray"]["ratio"] == 1.0


def test_bench_core_writes_per_task_time_and_ratio(tmp_path: Path) -> None:
    figures = tmp_path / "core.json"
    out = cli("bench", "--size", "tiny", "--scenario", "core", "--json", str(figures))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(figures.read_text())
    check_figures(result, {key: {"aioray", "ray-actor"} for key in CORE})
    assert result["size"] == "tiny"
    assert result["versions"]["ray"] == ray.__version__
    # The table at the end, from the same figures; progress went to stderr.
    assert "core.latency: one trivial call at a time" in out.stdout
    assert "plain async Ray actor, a call per coroutine" in out.stdout
    assert "[2/2] core · ray-actor:" in out.stderr
    assert "starting a temporary local Ray" in out.stderr


@pytest.mark.slow
def test_bench_every_scenario_and_runner_with_a_plot(tmp_path: Path) -> None:
    from aioray_runner._tools.bench.flows import RUNNERS, missing_runners

    figures, chart = tmp_path / "all.json", tmp_path / "all.png"
    out = cli("bench", "--size", "tiny", "--json", str(figures), "--plot", str(chart), timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(figures.read_text())
    installed = set(RUNNERS) - set(missing_runners(list(RUNNERS)))
    assert {"aioray", "ray", "threadpool", "gather"} <= installed  # the test extra has them
    expected = {key: {"aioray", "ray-actor"} for key in CORE}
    expected.update({key: installed for key in PREFECT})
    check_figures(result, expected)
    assert set(result["skipped"]) == set(RUNNERS) - installed
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart.stat().st_size > 20_000  # six panels of bars, not an empty figure


def test_bench_plot_without_matplotlib_names_the_extra_before_running(tmp_path: Path) -> None:
    # sys.modules["matplotlib"] = None makes `import matplotlib` fail as if absent.
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from aioray_runner.cli import main\n"
        f"sys.exit(main(['bench', '--size', 'tiny', '--plot', {str(tmp_path / 'x.png')!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=ROOT,
    )
    assert out.returncode == 1
    assert "python -m pip install '.[plot]' in a clone of aioray-runner" in out.stderr
    assert "starting a temporary local Ray" not in out.stderr  # it failed first
    assert not (tmp_path / "x.png").exists()


# -- doctor ---------------------------------------------------------------------------------------


def test_doctor_reports_versions_and_a_temporary_local_ray() -> None:
    out = cli("doctor", "--json", timeout=60)
    report = json.loads(out.stdout)
    assert out.returncode == (1 if report["problems"] else 0)
    from importlib.metadata import version

    import prefect

    from aioray_runner import __version__

    versions = report["versions"]
    assert versions["aioray-runner"] == __version__
    assert versions["ray"] == ray.__version__
    assert versions["prefect"] == prefect.__version__
    assert versions["anyio"] == version("anyio")
    assert versions["python"].startswith(".".join(map(str, sys.version_info[:3])))
    assert report["ray"]["address"] is None
    assert "temporary local Ray" in report["ray"]["summary"]
    assert "temporary local API" in report["prefect"]["summary"]
    for problem in report["problems"]:
        assert problem["fix"]
    # The text form says the same for a person.
    text = cli("doctor", timeout=60)
    assert f"ray            {ray.__version__}" in text.stdout


def test_doctor_names_an_unreachable_address_and_the_fix() -> None:
    address = f"127.0.0.1:{free_port()}"
    out = cli("doctor", "--address", address, timeout=60)
    assert out.returncode == 1
    assert f"PROBLEM: nothing answers at {address}" in out.stdout
    assert "fix: Start a cluster there (`ray start --head" in out.stdout


def test_doctor_connects_to_a_running_ray(ray_session: None) -> None:
    address = ray.get_runtime_context().gcs_address
    out = cli("doctor", "--json", "--address", address, "--connect", RAY_AUTH_MODE="token")
    report = json.loads(out.stdout)
    assert report["ray"]["reachable"] is True, report
    assert report["ray"]["connected"] is True, report
    assert report["ray"]["cluster"]["nodes"] == 1
    assert report["ray"]["cluster"]["cpus"] == ray.cluster_resources()["CPU"]
    assert not [p for p in report["problems"] if "Ray" in p["problem"]], report["problems"]


@pytest.mark.parametrize(
    ("prefect", "fastapi", "fix"),
    [
        ("3.4.7", "0.131.0", None),
        ("3.4.7", "0.132.0", 'pip install "fastapi<0.132"'),
        ("3.6.18", "0.154.0", 'pip install "fastapi<0.132"'),
        ("3.6.19", "0.136.3", None),
        ("3.6.29", "0.137.0", 'pip install "fastapi<0.137"'),
        ("3.7.7", "0.137.0", 'pip install "fastapi<0.137"'),
        ("3.7.8", "0.154.0", None),
        ("3.8.8", "0.155.0", 'pip install "fastapi<0.155"'),
        ("3.9.1", "0.150.0", None),
        ("3.4.6", "0.131.0", 'pip install "prefect>=3.4.7,<4"'),
        ("3.3.7", "0.115.0", 'pip install "prefect>=3.4.7,<4"'),
        ("4.0.0", "0.160.0", 'pip install "prefect>=3.4.7,<4"'),
    ],
)
def test_doctor_names_the_fix_for_prefect_and_fastapi_releases_that_do_not_work(
    prefect: str, fastapi: str, fix: str | None
) -> None:
    from aioray_runner._tools.doctor import prefect_problems

    problems = prefect_problems(prefect, fastapi)
    assert [p.fix for p in problems] == ([fix] if fix else []), problems
    for problem in problems:
        assert prefect in problem.problem


# -- demo ---------------------------------------------------------------------------------------


@pytest.mark.slow  # a Prefect API, Ray and a flow of 521 task runs: under a minute
def test_the_main_job_runs_from_examples_quietly(tmp_path: Path) -> None:
    """The README's first command as written: few lines, the summary, no traceback."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pipeline.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pipeline finished: {'pages': 20," in out.stdout
    printed = out.stdout.splitlines() + out.stderr.splitlines()
    assert len(printed) < 60, "\n".join(printed)  # not one line per task run
    assert "Traceback" not in out.stderr, out.stderr[-3000:]  # not even Prefect's own
    assert "Downloaded 500 pages" in out.stderr
    assert "Started a temporary local Ray instance" in out.stderr


def test_logs_print_above_the_demos_progress_bar() -> None:
    # A handler made before the bar holds the real stderr (as Prefect's console
    # handler does): while the bar is drawn its lines go through the bar's console.
    from rich.console import Console

    from aioray_runner._tools.demo import _ProgressBar

    screen = io.StringIO()
    stream = sys.stderr
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.progress_bar")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with _ProgressBar(2, "testing", Console(file=screen, force_terminal=True)) as advance:
            advance()
            logger.warning("a warning while the bar is drawn")
            advance()
    finally:
        logger.removeHandler(handler)
    assert "a warning while the bar is drawn" in screen.getvalue()
    assert handler.stream is stream  # and back where it was
