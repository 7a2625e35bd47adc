"""The noxfile's lists of test paths name files that exist: a renamed suite must not
drop out of a CI axis unseen (the noxfile is read, not imported: nox may be absent)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LISTS = ("SAME_ON_EVERY_RAY", "PYTHON_AXIS", "MIDDLE_RAY_AXIS")


def _lists() -> dict[str, list[str]]:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in LISTS:
                    found[target.id] = [ast.literal_eval(item) for item in node.value.elts]
    return found


def test_every_path_the_noxfile_names_exists() -> None:
    lists = _lists()
    assert set(lists) == set(LISTS)
    missing = [
        f"{name}: {path}"
        for name, paths in lists.items()
        for path in paths
        if not (ROOT / path).exists()
    ]
    assert not missing, missing
