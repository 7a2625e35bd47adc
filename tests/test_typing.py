"""User code written as the docs write it type-checks under mypy --strict and pyright.

The files in tests/typing_cases/ are written as README.md and docs/ write user
code (Prefect flows with AioRayTaskRunner, ``aresult``, the runtime with futures
and ObjectRefs as arguments), and the README's Python blocks are checked as they
stand. Each must give no error in ``mypy --strict`` (no other settings) nor in
pyright (its defaults: "standard" mode, which checks more than "basic").
``typing_cases/mistakes.py`` holds mistakes that must still be reported: each
line marked ``# error`` must get an error from both checkers, and no other line may.

One mypy run and one pyright run over all the files, side by side; both tools
come with the ``test`` extra (pyright with its own Node.js, from PyPI). Only the
installed Prefect is checked here; docs/measurements.md says how the other
supported releases were checked.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "typing_cases"
MISTAKES = "mistakes.py"
# mypy's line format: "file.py:12: error: message  [code]"
MYPY_ERROR = re.compile(r"^(?P<file>[^:\s]+\.py):(?P<line>\d+): error: (?P<message>.*)$")
TIMEOUT_S = 600


def _readme_blocks() -> list[tuple[int, str]]:
    """The README's Python blocks, found by docs/check_docs.py (as tests/test_readme.py does)."""
    spec = importlib.util.spec_from_file_location("check_docs", ROOT / "docs" / "check_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    blocks: list[tuple[int, str]] = module.python_blocks(ROOT / "README.md")
    return blocks


def _lay_out(where: Path) -> list[str]:
    """Copy the cases and the README's Python blocks into ``where``; their names."""
    names = []
    for case in sorted(CASES.glob("*.py")):
        shutil.copy(case, where / case.name)
        names.append(case.name)
    for line, source in _readme_blocks():
        name = f"readme_line_{line}.py"
        (where / name).write_text(source, encoding="utf-8")
        names.append(name)
    # No settings but the checkers' own: not this repository's pyproject.toml,
    # which mypy would find from here by walking up.
    (where / "mypy.ini").write_text("[mypy]\n", encoding="utf-8")
    (where / "pyrightconfig.json").write_text("{}", encoding="utf-8")
    return names


def _mypy_errors(output: str) -> dict[str, dict[int, list[str]]]:
    errors: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for line in output.splitlines():
        if match := MYPY_ERROR.match(line):
            errors[Path(match["file"]).name][int(match["line"])].append(match["message"])
    return errors


def _pyright_errors(output: str) -> dict[str, dict[int, list[str]]]:
    errors: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for diagnostic in json.loads(output)["generalDiagnostics"]:
        if diagnostic["severity"] == "error":
            line = diagnostic["range"]["start"]["line"] + 1  # pyright counts from 0
            errors[Path(diagnostic["file"]).name][line].append(diagnostic["message"])
    return errors


def _expected_lines(path: Path) -> set[int]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {number for number, text in enumerate(lines, 1) if text.rstrip().endswith("# error")}


def test_docs_spellings_type_check_and_mistakes_are_still_reported(tmp_path: Path) -> None:
    names = _lay_out(tmp_path)
    mypy = subprocess.Popen(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--config-file", "mypy.ini"),
            *("--cache-dir", str(tmp_path / ".mypy_cache"), "--no-pretty", *names),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pyright = subprocess.Popen(
        [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable, *names],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    mypy_out, _ = mypy.communicate(timeout=TIMEOUT_S)
    pyright_out, pyright_err = pyright.communicate(timeout=TIMEOUT_S)
    # Exit 1 means "errors found", which mistakes.py makes sure of; 2 and up is a crash.
    assert mypy.returncode == 1, mypy_out
    assert pyright.returncode == 1, pyright_out + pyright_err

    expected = _expected_lines(CASES / MISTAKES)
    assert len(expected) >= 5, "mistakes.py lost its '# error' markers"
    for checker, errors in (
        ("mypy", _mypy_errors(mypy_out)),
        ("pyright", _pyright_errors(pyright_out)),
    ):
        unexpected = {
            f"{name}:{line}": messages
            for name, by_line in errors.items()
            for line, messages in by_line.items()
            if not (name == MISTAKES and line in expected)
        }
        assert not unexpected, f"{checker} rejects code written as the docs write it: {unexpected}"
        missed = sorted(expected - set(errors[MISTAKES]))
        assert not missed, f"{checker} no longer reports the mistakes on lines {missed}"
