"""Hard bounds on a test run, so that no hang outlives it unseen (both conftests use it).

pytest-timeout (300 s per test, ``pyproject.toml``) fails a test that overruns
by raising in the main thread. A main thread stuck in native code that retries
on EINTR (a Ray call in C++) never sees that exception: a CI run once waited on
such a test until CI's own limit, and printed nothing about where it was.

* Per test: faulthandler's watchdog, a C thread that needs no GIL, prints every
  thread's stack and ends the process :data:`HARD_LIMIT_S` after a test
  began (setup and teardown included) unless the test has ended by then.
* Per run: when ``AIORAY_TESTS_DEADLINE`` (seconds since the epoch; ``.ci/run``
  sets it) has passed, no further test starts and the run fails, saying why:
  CI gets a red run with its output instead of a run cut off with none.
"""

from __future__ import annotations

import faulthandler
import os
import time
from collections.abc import Generator

import pytest

#: Seconds a test may take in all (setup, call, teardown) before the process is
#: ended: well past pytest-timeout's 300 s, which gets its chance first.
HARD_LIMIT_S = 420.0

_DEADLINE_VARIABLE = "AIORAY_TESTS_DEADLINE"

# The real standard error, taken before pytest captures it for a test (a stack
# printed into a test's capture would vanish with the process).
_stderr_fd: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    """Keep a descriptor of the terminal's standard error for the watchdog's stacks."""
    if not _stderr_fd:
        _stderr_fd.append(os.dup(2))


def _deadline() -> float | None:
    value = os.environ.get(_DEADLINE_VARIABLE, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise pytest.UsageError(
            f"{_DEADLINE_VARIABLE}={value!r} is not a number: give seconds since the epoch"
        ) from None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Start no test past the run's deadline; end the process if one test hangs."""
    deadline = _deadline()
    if deadline is not None and time.time() > deadline:
        pytest.exit(
            f"the run's deadline ({_DEADLINE_VARIABLE}) passed before {item.nodeid} could"
            " start: the tests left were not run (see --durations for where the time went)",
            returncode=3,
        )
    faulthandler.dump_traceback_later(
        HARD_LIMIT_S, exit=True, file=_stderr_fd[0] if _stderr_fd else 2
    )
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
