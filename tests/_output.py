"""Reading what a child process printed: the log records the tests leave out, and why."""

from __future__ import annotations

import re

#: Where a log record starts: Prefect's console format, Ray's logger, a Ray worker's prefix.
RECORD_START = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3} \| |\d{4}-\d\d-\d\d |\(\w+ pid=)")
#: Records left out of the traceback check, each with the reason.
KNOWN_NOISE = {
    # Prefect 3.8.8's temporary API, stopping while task-run events still arrive
    # after a flow of many tasks, logs this with two chained tracebacks (Prefect's
    # own runners too). Issue 11, item 1: to be fixed or explained on our side;
    # remove this entry then.
    "prefect.server.services.task_run_recorder - Error flushing": "issue 11, item 1",
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
