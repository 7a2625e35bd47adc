"""Prefect's temporary API server: given time to start, announced, explained when it fails.

With no ``PREFECT_API_URL``, Prefect starts a temporary API server for the
process the first time anything talks to its API, and waits
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (20 s by default) for it.
On a new ``PREFECT_HOME`` that server first creates and migrates its database:
measured 12.5-13.6 s on an idle 2-core machine for every supported Prefect, and
about 30 s on the same machine with other work running (docs/measurements.md).
A user's very first flow then fails with "Timed out while attempting to connect
to ephemeral Prefect API server", before any task runs, and the second run
works. So the runner and the demo give it :data:`TEMPORARY_API_START_S` unless
the user chose a wait of their own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("prefect.task_runner.aioray")

#: Seconds Prefect's temporary API may take to start (unless the user set
#: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS): four times the slowest
#: start measured here, so that a busy laptop or CI runner still gets there.
TEMPORARY_API_START_S = 120

_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def uses_temporary_api() -> bool:
    """Whether this process talks to a temporary API of its own (no ``PREFECT_API_URL``)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())


def start_timeout() -> int:
    """Seconds to wait for the temporary API to start: the user's setting, if they made
    one (the environment variable or a Prefect profile), else at least
    :data:`TEMPORARY_API_START_S`."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    configured = int(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    if _TIMEOUT_VARIABLE in os.environ or configured != _prefect_default():
        return configured
    return max(configured, TEMPORARY_API_START_S)


def allow_slow_start() -> None:
    """Let Prefect's own start of the temporary API (the flow's first API call) wait
    :func:`start_timeout` seconds in this process, instead of Prefect's 20.

    The flow engine starts that server before any task runner is entered, so the
    wait must be set in the settings Prefect reads then: this process's root
    settings. Nothing changes where the user chose a wait, or has an API of their
    own (``PREFECT_API_URL``).
    """
    from prefect import context
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if not uses_temporary_api():
        return
    wanted = start_timeout()
    root = context.GLOBAL_SETTINGS_CONTEXT
    if int(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value_from(root.settings)) >= wanted:
        return
    root.settings = root.settings.copy_with_update(
        updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: wanted}
    )
    logger.debug("Prefect's temporary API may take up to %d s to start", wanted)


def start_temporary_api(announce: Callable[[str], None] | None = None) -> str | None:
    """Start this process's temporary Prefect API now (a no-op once it runs).

    Returns its URL, or None where the process uses an API of its own.
    ``announce`` gets one line saying what is being waited for, when a start is
    needed. A server that does not answer in time is stopped, and the error says
    what to do.
    """
    if not uses_temporary_api():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if server.running:
        return str(server.api_url)
    timeout = start_timeout()
    if announce is not None:
        announce(
            f"Starting Prefect's temporary API server (up to {timeout} s: its first start"
            " on a new PREFECT_HOME creates its database)"
        )
    try:
        _start_out_of_terminal_reach(server, timeout)
    except Exception as exc:  # a time-out, or an answer other than 200 (httpx's errors)
        server.stop()  # Prefect leaves a server that was late running
        raise RuntimeError(
            f"Prefect's temporary API server did not answer within {timeout} s. Give it"
            f" more time ({_TIMEOUT_VARIABLE}=300), or start a server of your own once"
            " (`prefect server start` in another shell) and point Prefect at it"
            " (PREFECT_API_URL=http://127.0.0.1:4200/api)."
        ) from exc
    return str(server.api_url)


def _start_out_of_terminal_reach(server: Any, timeout: int) -> None:
    """Start the server with SIGINT blocked, so that a Ctrl-C in the terminal does not stop it.

    A terminal sends Ctrl-C's SIGINT to its whole process group, and Prefect starts
    its server in ours: the server stopped at once, while the flow's process was
    still ending its runs, and every run in flight kept a non-final state in its
    database (and Prefect's queues retried the dead server for minutes). Ray
    shields its own processes the same way. A blocked signal mask is inherited by
    the server's process, so Popen runs in a thread that blocks SIGINT (only that
    thread: the user's Ctrl-C still reaches this process). The server still stops
    when this process exits (Prefect's atexit hook sends it SIGTERM).
    """
    failed: list[BaseException] = []

    def start() -> None:
        if hasattr(signal, "pthread_sigmask"):  # not on Windows
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server.start(timeout=timeout)
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    starter = threading.Thread(target=start, name="aioray-prefect-api-start", daemon=True)
    starter.start()
    try:
        while starter.is_alive():
            starter.join(0.1)
    except BaseException:
        # Ctrl-C while it starts: a server that the terminal cannot stop must not
        # outlive this process. Stopping it ends the start (its process is gone);
        # repeated, because the start may launch it after the first stop.
        while starter.is_alive():
            server.stop()
            starter.join(0.1)
        server.stop()
        raise
    if failed:
        raise failed[0]


def _prefect_default() -> int:
    from prefect.settings.models.server.ephemeral import ServerEphemeralSettings

    field = ServerEphemeralSettings.model_fields["startup_timeout_seconds"]
    return int(field.default)
