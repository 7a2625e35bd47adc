"""Test matrix and checks: ``nox`` runs what CI runs; ``nox -l`` lists the sessions.

Examples::

    nox                     # lint, typecheck, docs, tests (every Ray version, each with
                            # its Prefect: 3.4.7, 3.6.29, newest; trio's suite on the
                            # newest), tests_py
    nox -s tests            # the Ray matrix only (Python 3.11)
    nox -s tests_py         # what differs by Python, on 3.12 and 3.13 (newest Ray)
    nox -s lint typecheck   # the quick checks
    nox -s "tests(ray='2.60.0')" -- -x -k cancel   # one Ray version; pytest args after --
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

# uv creates the venvs and installs in seconds (Ray and Prefect are big); fall
# back to virtualenv + pip where uv is not installed.
nox.options.default_venv_backend = "uv|virtualenv"
# A machine without Python 3.11 skips the sessions instead of failing the run.
nox.options.error_on_missing_interpreters = False
# Never fetch a standalone Python build: only package registries are reachable
# here, so a missing interpreter must be skipped, not downloaded.
nox.options.download_python = "never"

PYTHON = "3.11"
# The newer Pythons users run: the suite (less the slow cases) on the newest Ray.
NEWER_PYTHONS = ["3.12", "3.13"]


def _let_pyenv_shims_find(minors: list[str]) -> None:
    """Let pyenv's shims run the newest installed 3.12 and 3.13 beside the current one.

    A pyenv shim (`python3.12`) runs only the versions pyenv has selected (for
    `pyenv global 3.11.7`, only 3.11), so nox would not find the others:
    add the newest installed version of each minor to PYENV_VERSION, current ones
    first (`python` stays what it was). Nothing changes where pyenv is absent.
    """
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return

    def ask(*args: str) -> str:
        try:
            run = subprocess.run([pyenv, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return run.stdout if run.returncode == 0 else ""

    chosen = [v for v in (os.environ.get("PYENV_VERSION") or ask("version-name")).split(":") if v]
    if not chosen:
        return
    installed = ask("versions", "--bare").split()
    for minor in minors:
        if any(v.startswith(minor + ".") for v in chosen):
            continue
        prefix = minor + "."
        found = [v for v in installed if v.startswith(prefix) and v[len(prefix) :].isdigit()]
        if found:
            chosen.append(max(found, key=lambda v: int(v.rsplit(".", 1)[1])))
    os.environ["PYENV_VERSION"] = ":".join(chosen)


_let_pyenv_shims_find(NEWER_PYTHONS)

# Oldest to newest. 2.10.0 is the floor in pyproject.toml (`ray[client]>=2.10`):
# 2.9.x fails at the first actor call in a uv-made venv (no setuptools there):
# ray/_private/pydantic_compat.py does `from pkg_resources import packaging`.
# 2.40.0 is a middle point; 2.60.0 is the newest (token auth on by default: kept on).
RAY_VERSIONS = ["2.10.0", "2.40.0", "2.60.0"]
RAY_NEWEST = RAY_VERSIONS[-1]

# The Prefect each Ray session installs, a diagonal: the oldest supported Prefect
# (prefect-ray 0.6.0's floor too) with the oldest Ray, a middle one (the last
# release before Prefect moved the engine helpers we use, 3.7.1) with the middle
# Ray, the newest with the newest. So every Ray version and every Prefect runs the
# Prefect suites, and none runs them twice on one Prefect (a matrix of both axes
# took CI to about 54 minutes). Each older Prefect with the fastapi it works with
# (measured; README, "Supported versions"): before 3.6.19 Prefect's client sends
# task runs in a way fastapi 0.132+ refuses (422, subflows fail); before 3.7.8 its
# server answers every call with a 500 on fastapi 0.137+.
PREFECT_FOR_RAY = {
    "2.10.0": ("prefect==3.4.7", "fastapi<0.132"),
    "2.40.0": ("prefect==3.6.29", "fastapi<0.137"),
    RAY_NEWEST: (),  # the newest Prefect, as a user's `pip install` gets it
}

# The sessions CI runs, and plain `nox` too ("tests" means every Ray version,
# "tests_py" every newer Python).
# (tests_trio runs inside the newest Ray's tests session.)
nox.options.sessions = ["lint", "typecheck", "docs", "tests", "tests_py"]

ENV = {
    # Keep Ray on 127.0.0.1 (and off the host's other interfaces) in every session.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Prefect's temporary test server must not phone home.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}

# The slowest tests of each session in its output: where CI's time goes, for
# whoever keeps it under 45 minutes.
SLOWEST = ["--durations=10"]

LINT_PATHS = [
    "aioray_runner",
    "tests",
    "tests_trio",
    "benchmarks",
    "examples",
    "docs",
    "noxfile.py",
]


def _setup(session: nox.Session) -> None:
    session.env.update(ENV)


def _install_for_tests(session: nox.Session, ray: str, *pins: str) -> None:
    # One resolver call, so the Ray pin, any Prefect pins and the prefect extra's
    # `fastapi<0.155` (Prefect 3.7.8 to 3.8.x) are solved together.
    # Not editable: the tests run against the wheel as users install it (a file
    # missing from the wheel fails here). uv rebuilds it on every install.
    session.install(".[test]", f"ray[default,client]=={ray}", *pins)
    # Show what was actually resolved, so a failing matrix entry is easy to read.
    session.run("python", "-c", _SHOW_VERSIONS, silent=False)


_SHOW_VERSIONS = """
from importlib.metadata import version
names = "ray prefect fastapi pydantic anyio trio cloudpickle".split()
print("resolved:", *(f"{name}=={version(name)}" for name in names))
"""


@nox.session(python=PYTHON, allow_parallel=False)  # Ray needs both cores: one at a time
@nox.parametrize("ray", RAY_VERSIONS)
def tests(session: nox.Session, ray: str) -> None:
    """The main test suite against one Ray version (every one from the oldest supported),
    with the Prefect release paired with it (see PREFECT_FOR_RAY)."""
    _setup(session)
    _install_for_tests(session, ray, *PREFECT_FOR_RAY[ray])
    # The long fault-injection cases (Prefect runs under killed supervisors,
    # Ray killed under a flow, a node removed) run once, on the newest Ray; the
    # fault cases that touch what differs between Ray versions run on every one.
    # The differential suite (tests/test_differential.py) also runs once, on the
    # newest Ray: what it compares, Prefect's semantics, does not depend on Ray's version.
    # Every session runs the Prefect suites, each on its own Prefect release; a
    # middle Ray (MIDDLE_RAYS) runs little else (MIDDLE_RAY_AXIS).
    # The typing test (mypy and pyright over user files, a minute) runs once, on
    # the newest Ray and Prefect (Prefect 3.4's own @flow typing rejects
    # `asyncio.run(flow())`: documented, not ours to fix).
    paths = ["tests"]
    if session.posargs:
        selection: list[str] = []
    elif ray == RAY_NEWEST:
        selection = []
    else:
        selection = ["-m", "not slow and not differential", "-k", "not test_typing"]
        selection += [f"--ignore={path}" for path in SAME_ON_EVERY_RAY]
        if ray in MIDDLE_RAYS:
            paths = MIDDLE_RAY_AXIS
    session.run("pytest", *paths, *SLOWEST, *selection, *session.posargs)
    if ray == RAY_NEWEST and not session.posargs:
        # The trio backend's suite, in this venv: a session of its own would
        # install the same packages again (tests_trio runs it alone).
        session.run("pytest", "tests_trio", *SLOWEST)


# Suites that do not change with Ray's version (our own code on either side of
# the actor calls, or text): they run once, on the newest Ray, to keep CI short.
# README's blocks and the CLI's bench and demo are whole flows of the calls the
# other suites check one by one; the watchdog watches a loop in the supervisor,
# whatever started it; streams ride the same poll as outcomes.
SAME_ON_EVERY_RAY = [
    "tests/test_readme.py",
    "tests/test_cli.py",
    "tests/test_watchdog.py",
    "tests/test_secrets.py",
    "tests/test_streams.py",
    # The runner hands starting and joining Ray to the runtime's RayConnection,
    # whose own tests (test_start, test_bad_input, test_ray_lost) run on every
    # Ray; these whole-cluster flows (a multi-node Cluster, a ray:// server, two
    # minutes) add Prefect on top, which the other Prefect suites cover per release.
    "tests/test_prefect_cluster.py",
]

# The Rays between the oldest and the newest: the oldest and the newest bracket
# the Ray API the runtime uses, so a middle Ray runs what its session is for,
# its Prefect release (the Prefect suites), plus the core calls, on the way.
MIDDLE_RAYS = RAY_VERSIONS[1:-1]
MIDDLE_RAY_AXIS = [
    "tests/unit",
    "tests/test_submit.py",
    "tests/test_dependencies.py",
    "tests/test_held.py",
    "tests/test_prefect_runner.py",
    "tests/test_prefect_sync.py",
    "tests/test_prefect_states.py",
    "tests/test_prefect_faults.py",
    "tests/test_prefect_aresult.py",
    "tests/test_prefect_api.py",
    "tests/test_prefect_api_start.py",
    "tests/test_prefect_held.py",
    "tests/test_prefect_nested.py",
]


# What differs between Pythons: pickling (cloudpickle of functions, code
# objects), asyncio (eager tasks from 3.12 on the supervisors), trio, threads,
# generators, and importing Prefect. These files exercise exactly that; the
# rest (the Prefect suites, README, CLI, watchdog timings, faults, clusters)
# does not change with the Python version and runs on 3.11, once per Ray.
PYTHON_AXIS = [
    "tests/unit",
    "tests/test_submit.py",
    "tests/test_callers.py",
    "tests/test_cancel.py",
    "tests/test_dependencies.py",
    "tests/test_errors.py",
    "tests/test_sync_api.py",
    "tests/test_streams.py",
    "tests/test_held.py",
    "tests/test_prefect_sync.py",
]


@nox.session(python=NEWER_PYTHONS, allow_parallel=False)
def tests_py(session: nox.Session) -> None:
    """What differs by Python version (PYTHON_AXIS) on 3.12 and 3.13, against the
    newest Ray and Prefect; everything else runs on 3.11."""
    _setup(session)
    _install_for_tests(session, RAY_NEWEST)
    axis = PYTHON_AXIS
    if session.python != NEWER_PYTHONS[-1]:
        # A sync Prefect flow (Prefect's engine in supervisor threads) once, on
        # the newest Python: what differs by Python there is Prefect's own.
        axis = [path for path in axis if path != "tests/test_prefect_sync.py"]
    lean = [*axis, "-m", "not slow and not cluster"]
    session.run("pytest", *SLOWEST, *(session.posargs or lean))


@nox.session(python=PYTHON, allow_parallel=False)
def tests_trio(session: nox.Session) -> None:
    """The trio backend's tests (coroutines under trio in the supervisors), against the
    newest Ray; trio callers run in the main suite (tests/test_callers.py, parametrized)."""
    _setup(session)
    _install_for_tests(session, RAY_NEWEST)
    session.run("pytest", "tests_trio", *SLOWEST, *session.posargs)


@nox.session(python=PYTHON, allow_parallel=True)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    _setup(session)
    session.install("ruff>=0.6")
    # git keeps no empty folders: a fresh clone may lack some of these until
    # they hold a file, and ruff fails on a path that does not exist.
    paths = [p for p in LINT_PATHS if Path(p).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=PYTHON, allow_parallel=True)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on aioray_runner (settings in pyproject.toml)."""
    _setup(session)
    # With the extras installed mypy sees the real trio and Prefect types.
    session.install("-e", ".[prefect,trio]", "mypy>=1.10")
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON, allow_parallel=True)
def docs(session: nox.Session) -> None:
    """Docstrings on the public API; every Python block in README.md and docs/*.md
    compiles; the docs site (mkdocs.yml) builds with no warning (into site/)."""
    _setup(session)
    # prefect: the Prefect names in __all__ are imported to read their docstrings.
    session.install("-e", ".[prefect,trio,docs]")
    session.run("python", "docs/check_docs.py")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
