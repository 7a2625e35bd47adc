"""The README's main job: a real Prefect flow on a temporary local Ray, no setup needed.

Run it with ``aioray-runner demo`` (or ``python examples/pipeline.py``)::

    aioray-runner demo                  # 500 pages
    aioray-runner demo --pages 2000     # more

The flow "downloads" pages (async tasks that wait on I/O, here a sleep, run
concurrently on a supervisor actor), "parses" some of them (sync tasks, in
threads of the supervisor), then summarises the parsed pages (an async task whose
upstream futures are resolved inside the supervisor). Prefect starts a temporary
local API and the runner a temporary local Ray; both stop when the flow ends.

The code lives in the package (not only in ``examples/``) so that the demo runs
from an installed wheel.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

# No telemetry (this machine has no network for it). A local Ray on 127.0.0.1 needs
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported: importing the package
# does not import Ray, so setting it here, before the imports below, is in time.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Prefect 3.8's temporary API, stopped as this script exits, cancels its own
# task-run recorder mid-flush and logs "Error flushing 1 events" with two
# tracebacks (under Prefect's own task runners too; the runner has already waited
# until the API recorded every task run's end). Its server logs stay quiet here.
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")

from prefect import flow, get_run_logger, task

from aioray_runner import AioRayTaskRunner, aresult
from aioray_runner._prefect.api import start_temporary_api

if TYPE_CHECKING:
    from rich.console import Console


@task
async def download(page: int) -> bytes:
    """Stands for an HTTP request: 100 ms of waiting, no CPU."""
    await asyncio.sleep(0.1)
    return f"page {page}: ".encode() + os.urandom(64)


@task
def parse(raw: bytes) -> str:
    """A little CPU work in plain Python: a sync task, run in a thread of a supervisor."""
    digest = raw
    for _ in range(2_000):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:12]


@task
async def summarise(checksums: list[str]) -> dict[str, int | str]:
    """Gets the parsed pages themselves: the futures were resolved in the supervisor."""
    return {"pages": len(checksums), "first": min(checksums), "last": max(checksums)}


@flow(task_runner=AioRayTaskRunner(init_kwargs={"include_dashboard": False}))
async def pipeline(pages: int = 500, parsed: int = 20) -> dict[str, int | str]:
    """Download ``pages`` pages, parse the first ``parsed`` of them, summarise those."""
    logger = get_run_logger()
    started = time.monotonic()
    first = await aresult(download.submit(0))  # a submitted task's result, awaited
    logger.info("First page is %d bytes", len(first))

    downloads = download.map(range(pages))  # all in flight at once on the supervisor
    raw_pages = []
    with _ProgressBar(pages, "downloading") as advance:
        for future in downloads:
            raw_pages.append(await aresult(future))
            advance()
    elapsed = time.monotonic() - started
    logger.info(
        "Downloaded %d pages of 100 ms each in %.1f s (%.0f pages/s)",
        pages,
        elapsed,
        pages / elapsed,
    )

    checksums = [parse.submit(raw) for raw in raw_pages[:parsed]]
    # Prefect resolves futures in a task's parameters before it runs (here inside
    # the supervisor), but types the parameters as the task's own: hence the cast.
    summary = await aresult(summarise.submit(cast("list[str]", checksums)))
    logger.info("Summary: %s", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flow once; ``argv`` as for ``aioray-runner demo``. Returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="aioray-runner demo", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--pages", type=_positive, default=500, help="pages to download")
    parser.add_argument("--parsed", type=_positive, default=20, help="pages to parse")
    args = parser.parse_args(argv)
    _task_runs_quiet_on_console()
    # With no PREFECT_API_URL set, Prefect starts a temporary local API for this
    # process, and AioRayTaskRunner points the supervisors at it.
    try:
        try:
            _start_temporary_api_quietly()
        except RuntimeError as exc:  # said what to do: no traceback
            print(f"aioray-runner demo: {exc}", file=sys.stderr)
            return 1
        summary = asyncio.run(pipeline(args.pages, min(args.parsed, args.pages)))
    except KeyboardInterrupt:  # Ctrl-C: the runner has said what it ended; no traceback
        print("aioray-runner demo: interrupted", file=sys.stderr)
        return 130
    print(f"pipeline finished: {summary}")
    return 0


def _start_temporary_api_quietly() -> None:
    """Start Prefect's temporary API now, its process's library warnings quiet.

    As it stops at exit it may also cancel its database pool mid-rollback, which
    sqlalchemy logs with a traceback on the root logger (PREFECT_SERVER_LOGGING_LEVEL
    does not cover it). Only the server's process gets the quieter root logger:
    this process configured its logging when Prefect was imported, and Ray's
    workers start after the variable is restored.
    """
    quiet = {
        "PREFECT_LOGGING_ROOT_LEVEL": "CRITICAL",
        # Prefect 3.4's server also logs its own retried database calls ("database
        # is locked" from its triggers service on a busy machine, with tracebacks)
        # on "prefect._internal", which has a level of its own.
        "PREFECT_INTERNAL_LOGGING_LEVEL": "CRITICAL",
    }
    previous = {name: os.environ.get(name) for name in quiet}
    os.environ.update(quiet)
    try:
        start_temporary_api(announce=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _task_runs_quiet_on_console() -> None:
    """Keep the 1,000 "Task run ... Finished" lines out of the console.

    They still reach Prefect's API (and its UI); warnings and errors of task runs
    still print. Prefect's own console handler is on the root logger.
    """

    class OnlyProblems(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.name != "prefect.task_runs" or record.levelno >= logging.WARNING

    for handler in logging.getLogger().handlers:
        handler.addFilter(OnlyProblems())


class _ProgressBar:
    """A progress bar on stderr (rich's, which Prefect brings) while pages arrive.

    While it is drawn, log records print above it: on a terminal rich puts a
    proxy in ``sys.stderr`` that prints through the bar's console, and the
    logging handlers that hold the real stderr (Prefect's console handler, which
    prints the runner's warnings and the task runs' logs, among them) are
    pointed at that proxy until the bar is gone. Written past it, a line would
    land inside the bar and the next redraw would tear it.
    """

    def __init__(self, total: int, what: str, console: Console | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress(
            f"[bold]{what}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=not sys.stderr.isatty(),  # a log file keeps only the summary
        )
        self._task = self._progress.add_task(what, total=total)
        self._redirected: list[tuple[logging.StreamHandler[Any], Any]] = []

    def __enter__(self) -> Callable[[], None]:
        self._progress.start()
        self._redirected = _log_through(sys.stderr)
        return lambda: self._progress.advance(self._task)

    def __exit__(self, *exc: object) -> None:
        for handler, stream in self._redirected:
            _point(handler, stream)
        self._redirected = []
        self._progress.stop()


def _log_through(proxy: Any) -> list[tuple[logging.StreamHandler[Any], Any]]:
    """Point the handlers that write to the file ``proxy`` stands for at ``proxy``.

    ``proxy`` is rich's stand-in for stderr while a live display is drawn (it
    has ``rich_proxied_file``); anything else (not a terminal: no bar to tear)
    redirects nothing. Returns each handler redirected, with its stream before.
    """
    original = getattr(proxy, "rich_proxied_file", None)
    if original is None:
        return []
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    redirected: list[tuple[logging.StreamHandler[Any], Any]] = []
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                _point(handler, proxy)
                redirected.append((handler, original))
    return redirected


def _point(handler: logging.StreamHandler[Any], stream: Any) -> None:
    handler.setStream(stream)
    # Prefect's console handler prints through a rich Console of its own, made
    # on the handler's stream.
    console = getattr(handler, "console", None)
    if console is not None and hasattr(console, "file"):
        console.file = stream


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
