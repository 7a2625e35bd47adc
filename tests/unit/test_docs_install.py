"""Every install line in README.md and docs/*.md works as written (no Ray, no network).

The package is not on the package index: a line that installs ``aioray-runner``
by name would fail on a fresh machine. So every ``pip install`` in the docs, in a
code block or inline, installs from a clone (``.``, ``".[prefect]"``) or from a
wheel built there (``aioray_runner-0.1.0-py3-none-any.whl[prefect]``), with
extras that pyproject.toml defines, or installs other packages by name
(``prefect-ray``, ``"fastapi<0.155"``).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = set(PROJECT["optional-dependencies"])

# `pip install` and what follows, up to the end of an inline code span or a comment.
INSTALL = re.compile(r"\bpip3? install\b(?P<args>[^`#\n]*)")
# Where a command quoted in a sentence ends: "pip install '.[trio]' in a clone of ...".
PROSE = ("in", "from", "or", "and", "then", "to", "if", "for")
# A target with extras: `.[a,b]`, `./some.whl[a]`.
WITH_EXTRAS = re.compile(r"^(?P<target>[^\[\]]+)(?:\[(?P<extras>[^\]]*)\])?$")


def install_lines() -> list[tuple[str, str]]:
    """``(file:line, arguments of pip install)`` for every install line in the docs."""
    found = []
    for path in DOCS:
        for number, text in enumerate(path.read_text().splitlines(), 1):
            for match in INSTALL.finditer(text):
                found.append((f"{path.relative_to(ROOT)}:{number}", match["args"]))
    return found


def problems(args: str) -> list[str]:
    """What is wrong with ``pip install ARGS`` on a fresh machine from a clone ([] if nothing)."""
    out = []
    words = shlex.split(args)
    for stop in ("&&", ";", "||", *PROSE):
        if stop in words:
            words = words[: words.index(stop)]
    targets = [w for w in words if not w.startswith("-")]
    if not targets:
        out.append("installs nothing")
    for target in targets:
        parts = WITH_EXTRAS.match(target)
        if parts is None:
            out.append(f"cannot read {target!r}")
            continue
        path, extras = parts["target"], parts["extras"]
        local = path.startswith((".", "/")) or path.endswith(".whl")
        if local:
            if path.endswith(".whl"):
                name, version = Path(path).name.split("-")[:2]
                ours = canonicalize_name(name) == canonicalize_name(PROJECT["name"])
                if ours and version != PROJECT["version"]:
                    out.append(f"{target}: the version is {PROJECT['version']}")
            for extra in (extras or "").split(","):
                if extra.strip() and extra.strip() not in EXTRAS:
                    out.append(f"{target}: pyproject.toml has no extra {extra.strip()!r}")
            continue
        try:
            requirement = Requirement(target)
        except InvalidRequirement:
            out.append(f"{target!r} is neither a path nor a requirement")
            continue
        if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
            out.append(f"{target}: {PROJECT['name']} is not on the package index; install a clone")
    return out


LINES = install_lines()


def test_the_docs_have_install_lines() -> None:
    # The README, getting started, the CLI page, benchmarks, the FAQ: all install.
    files = {where.split(":")[0] for where, _ in LINES}
    assert {"README.md", "docs/getting-started.md", "docs/cli.md", "docs/benchmarks.md"} <= files
    assert len(LINES) >= 10


@pytest.mark.parametrize("args", [pytest.param(a, id=where) for where, a in LINES])
def test_install_line_works_from_a_clone(args: str) -> None:
    assert problems(args) == []


@pytest.mark.parametrize(
    ("args", "wrong"),
    [
        (" aioray-runner", "not on the package index"),
        (' "aioray_runner[prefect]"', "not on the package index"),
        (' "Aioray.Runner>=0.1"', "not on the package index"),
        (' ".[prefect,nonesuch]"', "no extra 'nonesuch'"),
        (" -e '.[tests]'", "no extra 'tests'"),
        (' "aioray_runner-9.9.9-py3-none-any.whl[prefect]"', "the version is"),
        (" --upgrade", "installs nothing"),
        (" aioray-runner in a venv", "not on the package index"),
    ],
)
def test_a_line_that_would_fail_is_caught(args: str, wrong: str) -> None:
    assert any(wrong in p for p in problems(args)), problems(args)


@pytest.mark.parametrize(
    "args",
    [
        ' ".[prefect,plot]" prefect-ray',
        " -e .",
        f' "aioray_runner-{PROJECT["version"]}-py3-none-any.whl[prefect]"',
        ' "fastapi<0.155"',
        " nox uv && python -m nox",
        " '.[trio]' in a clone of aioray-runner",
    ],
)
def test_a_line_that_works_passes(args: str) -> None:
    assert problems(args) == []
