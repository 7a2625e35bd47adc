"""Reading what a child process printed: the log records the tests leave out, and why."""

from __future__ import annotations

import re

#: Where a log record starts: Prefect's console format, Ray's logger, a Ray worker's prefix.
RECORD_START = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3} \| |\d{4}-\d\d-\d\d |\(\w+ pid=)")
#: Records left out of the traceback check, each with the reason.
KNOWN_NOISE = {
    # Prefect 3.8.8's temporary API, stopped at exit, cancels its task-run
    # recorder mid-flush and logs this with two chained tracebacks (Prefect's own
    # runners too). The demo keeps the server's logs quiet
    # (PREFECT_SERVER_LOGGING_LEVEL, see aioray_runner/demo.py); the README's other
    # snippets are run as written, so they may still show it.
    "prefect.server.services.task_run_recorder - Error flushing": "Prefect's shutdown race",
    # The same stop, one step later: the temporary API's database pool is
    # cancelled while it rolls a connection back (sqlalchemy logs the
    # CancelledError with its traceback). Seen once in CI on the README's
    # Prefect snippet, after the flow had finished and the runner had waited
    # for the API to record every task run.
    "sqlalchemy.pool.impl.AsyncAdaptedQueuePool - Exception during reset": "the same race",
}


def without_known_noise(stderr: str) -> str:
    """``stderr`` less the log records (with their tracebacks) listed in KNOWN_NOISE."""
    kept: list[str] = []
    skipping = False
    for line in stderr.splitlines():
        if RECORD_START.match(line):
            skipping = any(marker in line for marker in KNOWN_NOISE)
        if not skipping:
            kept.append(line)
    return "\n".join(kept)
