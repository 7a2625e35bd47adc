"""Every code block in README.md works as written.

The rule, per kind of block:

* **Python blocks run** (marked slow: nox runs them on the newest Ray), each as
  a script in a child process of its own (with Ray kept on 127.0.0.1 and no
  RAY_ADDRESS, so each starts a temporary local Ray; the Prefect one uses the
  session's Prefect API), and must exit 0 without a traceback other than the known ones in
  tests/_output.py.
  A line that offers an alternative in a comment (``anyio.run(main)  # or
  anyio.run(main, backend="trio")``) is run both ways. A block that says what it
  prints (``# 499500``) must print that.
* **Shell blocks are not run** (they install packages, run the whole CI, or run
  for minutes): every command in them is checked to refer to things that exist.
  ``pip install ".[extra]"``: the extras exist in pyproject.toml. ``python
  some/file.py --flag``: the file exists and its ``--help`` lists the flag.
  ``aioray-runner COMMAND --flag``: the command's ``--help`` lists the flag. ``nox
  -s SESSION``: the noxfile defines the session (and the parameter value, for
  ``tests(ray='...')``). ``mkdocs``: mkdocs.yml exists. Any other command fails
  this test until the rule says how to check it. The commands that do run are
  run elsewhere: the main job (``examples/pipeline.py``) in tests/test_cli.py,
  the rest by CI itself.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests._output import without_known_noise

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _check_docs() -> ModuleType:
    """docs/check_docs.py, which finds the code blocks (one parser for both checks)."""
    spec = importlib.util.spec_from_file_location("check_docs", ROOT / "docs" / "check_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BLOCKS = _check_docs().code_blocks(README)
PYTHON = [(line, source) for line, lang, source in BLOCKS if lang in ("python", "py")]
SHELL = [(line, source) for line, lang, source in BLOCKS if lang in ("bash", "sh", "shell")]


def test_the_readme_has_the_blocks_this_test_knows() -> None:
    # Every block is either Python or shell: a block of another kind would go unchecked.
    assert len(PYTHON) >= 2 and len(SHELL) >= 3
    assert len(PYTHON) + len(SHELL) == len(BLOCKS), [lang for _, lang, _ in BLOCKS]


# -- Python blocks: run ----------------------------------------------------------------------

#: ``call()  # or other()`` at the end of a line: the alternative is run too.
ALTERNATIVE = re.compile(r"^(?P<indent>\s*)(?P<code>\S.*?)\s+# or (?P<other>.+)$")
#: ``print(...)  # 499500``: what the block prints.
PRINTS = re.compile(r"print\(.*\)\s+#\s*(?P<out>.+)$")


def variants(source: str) -> list[tuple[str, str]]:
    """``(name, source)``: the block as written, and once per ``# or`` alternative."""
    out = [("as written", source)]
    lines = source.splitlines()
    for i, line in enumerate(lines):
        match = ALTERNATIVE.match(line)
        if match is None:
            continue
        other = match["other"].strip()
        try:
            ast.parse(other)
        except SyntaxError:
            continue  # prose, not code
        changed = [*lines[:i], match["indent"] + other, *lines[i + 1 :]]
        out.append((other, "\n".join(changed) + "\n"))
    return out


def expected_output(source: str) -> list[str]:
    return [m["out"].strip() for line in source.splitlines() if (m := PRINTS.search(line))]


CASES = [
    pytest.param(source, id=f"README.md:{line} {name}")
    for line, block in PYTHON
    for name, source in variants(block)
]


# Slow: each starts Ray (and one a Prefect API) in a child process, about two
# minutes in all; nox runs them once, on the newest Ray.
@pytest.mark.slow
@pytest.mark.parametrize("source", CASES)
def test_python_block_runs(source: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if "from prefect" in source:
        # The session's API, not a temporary one of the block's own (half a
        # minute to start and stop): a first run on a temporary API is the main
        # job's test (tests/test_cli.py), the README's first command.
        env["PREFECT_API_URL"] = request.getfixturevalue("prefect_api")
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    unexpected = without_known_noise(out.stderr)
    assert "Traceback" not in unexpected, unexpected[-4000:]
    printed = out.stdout.strip().splitlines()
    for expected in expected_output(source):
        assert expected in printed, (expected, out.stdout[-2000:])


def test_the_alternatives_are_found() -> None:
    # The trio line of the runtime's block is one: run with backend="trio" too.
    names = [case.id for case in CASES]
    assert any('backend="trio"' in name for name in names), names


# -- shell blocks: every command refers to something that exists ------------------------------

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOXFILE = (ROOT / "noxfile.py").read_text()


def commands() -> list[tuple[int, list[str]]]:
    """``(README line, argv)`` for each command in the shell blocks (``&&`` splits them)."""
    out = []
    for first_line, block in SHELL:
        for offset, raw in enumerate(block.splitlines()):
            words = shlex.split(raw, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                out.append((first_line + offset, words[:cut]))
                words = words[cut + 1 :]
    return out


def flags(argv: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in argv if w.startswith("--") and w != "--"]


@functools.cache
def help_text(argv: tuple[str, ...]) -> str:
    out = subprocess.run(
        [sys.executable, *argv, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
    )
    assert out.returncode == 0, (argv, out.stderr[-2000:])
    return out.stdout


def nox_sessions() -> set[str]:
    return set(re.findall(r"^def (\w+)\(session", NOXFILE, re.MULTILINE))


def check_command(argv: list[str]) -> None:
    if argv[:3] == ["python", "-m", "pip"]:
        argv = argv[2:]
    if argv[:1] == ["pip"]:
        assert argv[1] == "install", argv
        extras = PYPROJECT["project"]["optional-dependencies"]
        for spec in argv[2:]:
            if spec.startswith(".["):
                for extra in spec[2:-1].split(","):
                    assert extra in extras, f"pip install {spec}: no extra {extra!r}"
        return
    if argv[:3] == ["python", "-m", "nox"]:
        argv = argv[2:]
    if argv[:1] == ["nox"]:
        args = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
        if "-s" in args:
            for session in args[args.index("-s") + 1 :]:
                name, _, param = session.partition("(")
                assert name in nox_sessions(), f"nox has no session {name!r}"
                if param:  # tests(ray='2.60.0'): the value is in the matrix
                    value = re.search(r"'([^']+)'", param)
                    assert value is not None and f'"{value[1]}"' in NOXFILE, session
        return
    if argv[:1] == ["python"] and argv[1].endswith(".py"):
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist"
        text = help_text((argv[1],))
        for flag in flags(argv):
            assert flag in text, f"{argv[1]} has no option {flag}"
        return
    if argv[:1] == ["aioray-runner"]:
        assert "aioray-runner" in PYPROJECT["project"]["scripts"]
        text = help_text(("-m", "aioray_runner", *argv[1:2]))
        for flag in flags(argv):
            assert flag in text, f"aioray-runner {argv[1]} has no option {flag}"
        return
    if argv[:1] == ["mkdocs"]:
        assert (ROOT / "mkdocs.yml").is_file()
        return
    if argv[:3] == ["python", "-m", "pytest"]:
        for path in argv[3:]:
            assert path.startswith("-") or (ROOT / path).exists(), f"{path} does not exist"
        return
    raise AssertionError(f"no rule to check {shlex.join(argv)!r}: add one to this test")


@pytest.mark.parametrize(
    "argv", [pytest.param(argv, id=f"README.md:{line} {argv[0]}") for line, argv in commands()]
)
def test_shell_command_refers_to_what_exists(argv: list[str]) -> None:
    check_command(argv)


def test_the_first_command_is_the_main_job() -> None:
    # The README's first line installs the prefect extra and runs the demo flow.
    first = commands()[:2]
    assert first[0][1] == ["python", "-m", "pip", "install", ".[prefect]"]
    assert first[1][1] == ["python", "examples/pipeline.py"]
