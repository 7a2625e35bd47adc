"""What every benchmark shares: a Ray of its own, progress on stderr, tables, versions."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import Any, TextIO


def log(message: str) -> None:
    """Progress, to stderr (the figures go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def quiet_environment() -> None:
    """Keep Ray on 127.0.0.1 and Prefect quiet; call before Ray or Prefect is imported.

    Prefect's console shows warnings only: thousands of "Finished in state
    Completed()" lines would bury the progress (the API still gets every log).
    Ray workers inherit this environment.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # The temporary API's own errors while it stops (events still being
    # recorded as its database closes) are Prefect's, not the benchmark's.
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")


@contextmanager
def local_ray(num_cpus: int, *, log_to_driver: bool = True) -> Iterator[None]:
    """Start a temporary local Ray of the benchmark's own on 127.0.0.1; shut it down after.

    ``address="local"`` always starts a new instance: a benchmark never joins a
    Ray that another program runs on this machine, nor one named by RAY_ADDRESS.
    """
    quiet_environment()
    os.environ.pop("RAY_ADDRESS", None)  # the runners would otherwise read it
    import ray  # here: importing Ray takes a second or two

    log(f"== starting a temporary local Ray (num_cpus={num_cpus})")
    started = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=log_to_driver,
    )
    log(f"   Ray up in {time.perf_counter() - started:.1f} s")
    try:
        yield
    finally:
        log("== shutting Ray down")
        ray.shutdown()


class Counters:
    """Tasks submitted and done in the step that runs now (read by :class:`Progress`).

    One module-level instance, :data:`COUNTERS`: flows refer to it by name, so it
    is never pickled with them.
    """

    def __init__(self) -> None:
        self.submitted = 0
        self.done = 0

    def reset(self) -> None:
        """Back to zero, for the next step."""
        self.submitted = self.done = 0


COUNTERS = Counters()


class Progress:
    """A progress bar on stderr: steps done, and the tasks done in the current step.

    On a terminal one line is redrawn ten times a second from a thread (so it
    moves while a long submit loop holds the event loop); elsewhere (a file, CI)
    a line is printed when a step starts and ends, and every ``quiet_interval``
    seconds while it runs.
    """

    def __init__(
        self,
        total_steps: int,
        stream: TextIO | None = None,
        interval: float = 0.1,
        quiet_interval: float = 10.0,
    ) -> None:
        self.total_steps = total_steps
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if self.tty else quiet_interval
        self.steps_done = 0
        self.label = ""
        self.n = 0
        self._step_started = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-progress", daemon=True)

    def start_step(self, label: str, n: int) -> None:
        """A new step: ``n`` tasks called ``label``; resets :data:`COUNTERS`."""
        with self._lock:
            COUNTERS.reset()
            self.label, self.n = label, n
            self._step_started = time.perf_counter()
            if not self.tty:
                self._write_line(f"[{self.steps_done + 1}/{self.total_steps}] {label} ...")

    def end_step(self, summary: str) -> None:
        """The step is over: print its one-line summary above the bar."""
        with self._lock:
            self.steps_done += 1
            self._write_line(f"[{self.steps_done}/{self.total_steps}] {self.label}: {summary}")

    def note(self, message: str) -> None:
        """A line above the bar (a skipped runner, a phase starting)."""
        with self._lock:
            self._write_line(message)

    def _write_line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + "\n" + self._bar())
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _bar(self, width: int = 24) -> str:
        fraction = self.steps_done / self.total_steps if self.total_steps else 1.0
        if self.n and self.steps_done < self.total_steps:
            fraction += min(COUNTERS.done, self.n) / self.n / self.total_steps
        filled = round(width * min(fraction, 1.0))
        elapsed = time.perf_counter() - self._step_started
        return (
            f"[{'#' * filled}{'-' * (width - filled)}] {self.steps_done}/{self.total_steps}"
            f"  {self.label}  {COUNTERS.done}/{self.n} done  {elapsed:.0f} s"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self.tty:
                    self.stream.write("\r\x1b[2K" + self._bar())
                elif self.n and time.perf_counter() - self._step_started > self.interval / 2:
                    elapsed = time.perf_counter() - self._step_started
                    self.stream.write(
                        f"    {self.label}: {COUNTERS.done}/{self.n} done, {elapsed:.0f} s\n"
                    )
                self.stream.flush()

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions(*distributions: str) -> dict[str, Any]:
    """Python and the versions of the given distributions (None: not installed)."""
    return {
        "python": platform.python_version(),
        **{name: installed_version(name) for name in distributions},
    }
