"""Noticing that the Ray instance itself went away.

A supervisor's death shows up as a failed ``poll``. Ray's own death may not:
with its GCS server killed, calls to the supervisors neither answer nor fail,
and after 60 s Ray ends the whole driver process ("Failed to connect to GCS
within 60 seconds"), taking the caller's program and any cleanup with it.

So the runtime's I/O thread asks a probe, once a second, whether Ray is still
there, and fails every call at once when it is not (``Pool.on_ray_lost``):

* a local Ray this process started: the GCS server and the raylet are our child
  processes; one that exited is gone for good (``Popen.poll``, no I/O);
* a cluster joined by address: a TCP connect to its GCS; two failures in a row
  (a busy GCS still accepts connections) mean it is gone.

A Ray client (``ray://``) has no probe: Ray's client raises on its own when its
server goes away.

:func:`probe_address` is the one TCP probe of a Ray address: the watch's, the
one ``Runtime`` makes before ``ray.init`` (``connection.py``), and doctor's.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from .iothread import IOThread

#: Seconds between two probes.
PROBE_EVERY_S = 1.0
#: Seconds a TCP connect may take before an address counts as unreachable.
PROBE_TIMEOUT_S = 3.0

Probe = Callable[[], "str | None"]


def probe_address(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> OSError | None:
    """The one TCP probe of a Ray address: ``None`` if something accepts a
    connection at ``host:port`` within ``timeout`` seconds, else the error.

    ``Runtime`` probes before ``ray.init``, ``aioray-runner doctor`` reports it,
    and the Ray watch probes a joined cluster's GCS with it once a second.
    """
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return exc
    return None


class RayWatch:
    """Asks ``probe`` once a second, on the I/O thread, whether Ray is still there,
    and calls ``on_lost(reason)`` once it is not (the pool fails every call)."""

    def __init__(
        self,
        io: IOThread,
        probe: Probe | None,
        on_lost: Callable[[str], None],
        logger: logging.Logger,
        stopped: Callable[[], bool],
    ) -> None:
        self._io = io
        self._probe = probe
        self._on_lost = on_lost
        self._logger = logger
        self._stopped = stopped

    def start(self) -> None:
        """Start probing (no probe: nothing to do)."""
        self._io.call_soon(self._schedule)

    def _schedule(self) -> None:
        if self._probe is not None and not self._stopped():
            self._io.call_later(PROBE_EVERY_S, lambda: self._io.spawn(self._ask()))

    async def _ask(self) -> None:
        assert self._probe is not None
        if self._stopped():
            return
        # In a thread: a probe of a remote GCS may wait up to two seconds.
        try:
            reason = await self._io.loop.run_in_executor(None, self._probe)
        except Exception:  # a probe that breaks must not stop the probing
            self._logger.debug("the Ray probe failed", exc_info=True)
            reason = None
        if reason is None:
            self._schedule()
        else:
            self._on_lost(reason)


def probe_for_current_ray(owns_ray: bool) -> Probe | None:
    """A probe for the Ray this process is connected to, or ``None`` if there is none.

    The probe returns ``None`` while Ray is there, else a sentence saying what
    went away. It may block for up to two seconds: call it off the event loop.
    """
    if ray.util.client.ray.is_connected():
        return None  # a Ray client: its own connection fails loudly
    node: Any = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return None
    if owns_ray:
        processes = {
            name: list(infos)
            for name, infos in getattr(node, "all_processes", {}).items()
            if name in ("gcs_server", "raylet")
        }
        if processes:
            return _child_probe(processes)
    address = getattr(node, "gcs_address", None)
    if isinstance(address, str) and ":" in address:
        host, _, port = address.rpartition(":")
        return _gcs_probe(host, int(port))
    return None


def _child_probe(processes: dict[str, list[Any]]) -> Probe:
    def probe() -> str | None:
        for name, infos in processes.items():
            for info in infos:
                code = info.process.poll()
                if code is not None:
                    return (
                        f"Ray's {name} process (pid {info.process.pid}) on this machine"
                        f" exited (code {code})"
                    )
        return None

    return probe


def _gcs_probe(host: str, port: int) -> Probe:
    misses = 0

    def probe() -> str | None:
        nonlocal misses
        exc = probe_address(host, port, timeout=2)
        if exc is None:
            misses = 0
            return None
        misses += 1
        if misses < 2:
            return None
        return f"the cluster's GCS at {host}:{port} does not answer ({exc})"

    return probe


def processes_of_local_ray() -> set[tuple[int, str]]:
    """The local Ray this process started, and its descendants: ``(pid, start time)``.

    After Ray lost its GCS or raylet, ``ray.shutdown()`` stops the processes it
    started itself but not the agents the raylet started (dashboard agent,
    runtime-env agent): they are left running, adopted by init. Taken before the
    shutdown, this list lets the runtime stop them too; the start time makes
    sure a pid the system reused meanwhile is left alone. Linux only (it reads
    ``/proc``); elsewhere it finds nothing.
    """
    node: Any = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return set()
    found: dict[int, str] = {}
    todo = [
        info.process.pid for infos in getattr(node, "all_processes", {}).values() for info in infos
    ]
    while todo:
        pid = todo.pop()
        if pid in found or not (started := _start_time(pid)):
            continue
        found[pid] = started
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in children.read_text().split())
            except (OSError, ValueError):
                pass
    return set(found.items())


def stop_leftovers(processes: set[tuple[int, str]]) -> list[int]:
    """SIGKILL those of ``processes`` still running (same pid, same start time)."""
    stopped = []
    for pid, started in processes:
        if _start_time(pid) != started:
            continue  # gone, or the pid now belongs to another process
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        stopped.append(pid)
    return stopped


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or "" if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces: count fields after its ")".
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""
