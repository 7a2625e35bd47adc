"""Cheap documentation checks, run by ``nox -s docs`` (nothing is built).

1. Every name in ``aioray_runner.__all__`` has a docstring, and so has every
   public method and property that its classes define themselves.
2. Every ``python``/``py`` code block in README.md and docs/*.md compiles.

Usage: ``python docs/check_docs.py`` from the repository root, in an environment
where aioray-runner is installed with its ``prefect`` extra (the Prefect names in
``__all__`` are imported lazily, so checking them imports Prefect).
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# An opening fence: ``` or ~~~, then the info string (its first word is the language).
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
PYTHON_LANGS = {"python", "py", "python3"}


def missing_docstrings() -> list[str]:
    import aioray_runner

    problems: list[str] = []
    for name in aioray_runner.__all__:
        try:
            obj = getattr(aioray_runner, name)
        except Exception as exc:  # a lazy (Prefect) name that fails to import
            problems.append(f"aioray_runner.{name}: cannot be imported: {exc!r}")
            continue
        if not (inspect.getdoc(obj) or "").strip():
            problems.append(f"aioray_runner.{name}: no docstring")
        if inspect.isclass(obj) and obj.__module__.startswith("aioray_runner"):
            problems += _missing_member_docstrings(name, obj)
    return problems


def _missing_member_docstrings(name: str, cls: type[Any]) -> list[str]:
    problems = []
    # Only what the class defines itself: inherited members (Exception.args, ...)
    # are documented where they come from.
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if not (inspect.isfunction(value) or isinstance(value, property)):
            continue
        if not (value.__doc__ or "").strip():
            problems.append(f"aioray_runner.{name}.{attr}: no docstring")
    return problems


def code_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(first line number, language, source)`` of each fenced code block in a Markdown file.

    Also used by tests/test_readme.py, which runs the README's blocks.
    """
    blocks: list[tuple[int, str, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        lang = match["info"].strip("{}.").lower()
        start = i + 1
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        body = [line[indent:] if line[:indent].isspace() else line for line in lines[start:i]]
        blocks.append((start + 1, lang, "\n".join(body) + "\n"))
        i += 1  # past the closing fence
    return blocks


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line number, source)`` of each Python code block in a Markdown file."""
    return [(line, source) for line, lang, source in code_blocks(path) if lang in PYTHON_LANGS]


def broken_code_blocks() -> tuple[int, list[str]]:
    problems: list[str] = []
    count = 0
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in paths:
        if not path.exists():
            continue
        for line, source in python_blocks(path):
            count += 1
            where = f"{path.relative_to(ROOT)}:{line}"
            try:
                # Snippets often `await` at top level (as in an async REPL or a
                # notebook): accept that, it is still valid Python to show.
                compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            except SyntaxError as exc:
                problems.append(f"{where}: code block does not compile: {exc}")
    return count, problems


def main() -> int:
    problems = missing_docstrings()
    blocks, block_problems = broken_code_blocks()
    problems += block_problems
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"docs check failed: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    import aioray_runner

    print(
        f"docs check passed: {len(aioray_runner.__all__)} public names documented,"
        f" {blocks} Python code block(s) compile"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
