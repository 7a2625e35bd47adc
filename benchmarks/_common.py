"""What the benchmark scripts share: progress lines, the commit measured, a local Ray.

Each script runs as ``python benchmarks/bench_*.py``, so this folder is on
``sys.path`` and ``import _common`` finds this module.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aioray_runner._tools.bench.common import log

__all__ = ["git_commit", "log", "ray_instance", "write_figures"]


def git_commit() -> str | None:
    """The short commit of this checkout, if git can tell."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@contextmanager
def ray_instance(num_cpus: int) -> Iterator[None]:
    """Start a temporary local Ray of the script's own (never another program's); stop it after."""
    from aioray_runner._tools.bench.common import local_ray

    with local_ray(num_cpus):
        yield


def write_figures(
    path: Path, benchmark: str, args: argparse.Namespace, versions: dict[str, str], **extra: Any
) -> None:
    """Write a benchmark's figures as JSON: its arguments, versions, commit, CPUs and ``extra``."""
    payload = {
        "benchmark": benchmark,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": {**versions, "git_commit": git_commit()},
        "cpus": os.cpu_count(),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    log(f"   figures written to {path}")
