"""Whose code the blocked-loop watchdog may name: never this package's own (no Ray).

The watchdog names a call only by a frame of the user's code; the package's
frames (the supervisor running a call, the Prefect adapter running an engine)
are machinery. Moving the watchdog into ``_common/`` once made its notion of
"the package" that folder alone, and the main job's warnings named
``add (.../_supervisor/functions.py)`` and ``run (.../_prefect/remote.py)``.
"""

from __future__ import annotations

from pathlib import Path

import aioray_runner
from aioray_runner._common.watchdog import _is_library  # the rule under test

PACKAGE = Path(aioray_runner.__file__).resolve().parent


def test_no_module_of_the_package_counts_as_the_users_code_but_the_demos_tasks() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40  # every folder, not the top one alone
    for path in modules:
        users = path == PACKAGE / "_tools" / "demo.py"  # its tasks stand for a user's
        assert _is_library(str(path)) is not users, path
