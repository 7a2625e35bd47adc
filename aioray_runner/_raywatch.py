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
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

#: Seconds between two probes.
PROBE_EVERY_S = 1.0

Probe = Callable[[], "str | None"]


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
        try:
            with socket.create_connection((host, port), timeout=2):
                misses = 0
                return None
        except OSError as exc:
            misses += 1
            if misses < 2:
                return None
            return f"the cluster's GCS at {host}:{port} does not answer ({exc})"

    return probe


def processes_of_local_ray() -> set[int]:
    """Pids of the local Ray this process started, and of their descendants.

    After Ray lost its GCS or raylet, ``ray.shutdown()`` stops the processes it
    started itself but not the agents the raylet started (dashboard agent,
    runtime-env agent): they are left running, adopted by init. Taken before the
    shutdown, this list lets the runtime stop them too. Linux only (it reads
    ``/proc``); elsewhere it finds the direct processes alone.
    """
    node: Any = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return set()
    found: set[int] = set()
    todo = [
        info.process.pid for infos in getattr(node, "all_processes", {}).values() for info in infos
    ]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in children.read_text().split())
            except (OSError, ValueError):
                pass
    return found


def stop_leftovers(pids: set[int]) -> list[int]:
    """SIGKILL those of ``pids`` still running; returns the ones it stopped."""
    stopped = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        stopped.append(pid)
    return stopped
