"""``aioray-runner status``: what every runtime's supervisors on a Ray cluster are doing.

Joins the cluster as a Ray driver of its own (namespace ``aioray-status``), finds
the supervisors by their actor names (``aioray-supervisor-<runtime>-<index>-<generation>``,
see ``_caller/placement.actor_name``) in every namespace, and asks each for its
``status()``: counts of its calls by phase, its oldest running calls, its
loop's lag, memory. It only reads; a supervisor answers from its loop in well
under a millisecond (``benchmarks/bench_status.py`` measures the cost of being
watched). Names and labels only, never arguments or results.

The JSON schema (``--json``; :data:`SCHEMA` is its version) is documented in
``docs/observability.md``.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import time
from typing import Any

#: Version of the ``--json`` layout; raised when a key changes meaning or goes away.
SCHEMA = 1

#: The prefix of every supervisor's Ray actor name.
ACTOR_PREFIX = "aioray-supervisor-"
_ACTOR_NAME = re.compile(
    re.escape(ACTOR_PREFIX)
    + r"(?P<runtime>.+?)(?:-g(?P<group>\d+))?-(?P<index>\d+)-(?P<generation>\d+)$"
)


class StatusError(Exception):
    """The cluster could not be looked at (nothing at the address, no Ray at all)."""


def _address(address: str | None) -> str:
    from .._caller.connection import address_advice, endpoint_of
    from .._caller.raywatch import PROBE_TIMEOUT_S, probe_address
    from .doctor import local_cluster_address

    given = address or os.environ.get("RAY_ADDRESS") or None
    if given in (None, "auto"):
        found = local_cluster_address()
        if found is None:
            raise StatusError(
                "no Ray cluster to look at: give --address (or RAY_ADDRESS) of the cluster"
                " your program runs on. A program that started its own temporary local Ray"
                " (no address) cannot be joined from outside: start a cluster with"
                " `ray start --head --node-ip-address=127.0.0.1` and run the program with"
                " address='auto'"
            )
        given = found
    assert given is not None
    endpoint = endpoint_of(given)
    if endpoint is not None:
        exc = probe_address(*endpoint, PROBE_TIMEOUT_S)
        if exc is not None:
            reason = exc.strerror or type(exc).__name__
            raise StatusError(f"nothing answers at {given} ({reason}). {address_advice(given)}")
    return given


def collect(address: str | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
    """Every runtime's supervisors on the cluster at ``address``, as plain data.

    ``address``: a Ray address, else ``RAY_ADDRESS``, else the cluster ``ray start``
    runs on this machine. Connects once (the first call of a process);
    supervisors that do not answer within ``timeout`` seconds are listed with an
    ``error``.

    Raises:
        StatusError: nothing answers at the address, or there is no cluster.
    """
    import ray

    target = _address(address)
    if not ray.is_initialized():
        try:
            ray.init(
                address=target,
                namespace="aioray-status",
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        except Exception as exc:  # e.g. Ray 2.52+ refusing a driver without the token
            raise StatusError(
                f"could not join the Ray cluster at {target}: {_in_a_line(exc)}."
                " A cluster with token authentication (Ray 2.52 and newer, the default) needs"
                " RAY_AUTH_MODE=token in this shell and its token in ~/.ray/auth_token or"
                " RAY_AUTH_TOKEN; `aioray-runner doctor --address ...` checks the rest"
            ) from exc
    found = [
        (entry["name"], entry["namespace"], match)
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if (match := _ACTOR_NAME.match(entry["name"])) is not None
    ]
    refs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, namespace, _ in found:
        try:
            handle = ray.get_actor(name, namespace=namespace)
            refs[name] = handle.status.remote()
        except Exception as exc:  # gone between the listing and now
            errors[name] = f"{type(exc).__name__}: {exc}"
    deadline = time.monotonic() + timeout
    answers: dict[str, dict[str, Any]] = {}
    for name, ref in refs.items():
        try:
            answers[name] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            errors[name] = f"did not answer within {timeout:.0f} s"
        except Exception as exc:  # dead, or restarting
            errors[name] = _in_a_line(exc)[:200]
    runtimes: dict[tuple[str, str], dict[str, Any]] = {}
    for name, namespace, match in found:
        runtime = runtimes.setdefault(
            (namespace, match["runtime"]),
            {"runtime": match["runtime"], "namespace": namespace, "supervisors": []},
        )
        entry: dict[str, Any] = {
            "actor_name": name,
            "group": int(match["group"] or 0),
            "index": int(match["index"]),
            "generation": int(match["generation"]),
        }
        if name in answers:
            entry.update(answers[name])
        else:
            entry["error"] = errors.get(name, "no answer")
        runtime["supervisors"].append(entry)
    for runtime in runtimes.values():
        runtime["supervisors"].sort(key=lambda s: (s["group"], s["index"], s["generation"]))
        runtime["totals"] = _totals(runtime["supervisors"])
    return {
        "schema": SCHEMA,
        "address": target,
        "taken_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "runtimes": sorted(runtimes.values(), key=lambda r: (r["namespace"], r["runtime"])),
    }


_SUMMED = (
    "running",
    "waiting_for_dependencies",
    "waiting_to_start",
    "finished",
    "failed",
    "cancelled",
    "in_thread_pool",
)


def _totals(supervisors: list[dict[str, Any]]) -> dict[str, int]:
    return {key: sum(int(s.get(key, 0)) for s in supervisors) for key in _SUMMED}


def render(status: dict[str, Any]) -> str:
    """A plain-text table per runtime (what the command prints on a terminal)."""
    lines = [f"Ray at {status['address']}, {status['taken_at']}"]
    if not status["runtimes"]:
        lines.append(
            "no aioray-runner supervisors on this cluster (a runtime that started its own"
            " temporary local Ray is not on it)"
        )
    for runtime in status["runtimes"]:
        totals = runtime["totals"]
        lines.append("")
        lines.append(
            f"runtime {runtime['runtime']} (namespace {runtime['namespace']}):"
            f" {totals['running']} running, {totals['waiting_for_dependencies']} waiting for"
            f" dependencies, {totals['waiting_to_start']} waiting to start;"
            f" {totals['finished']} finished, {totals['failed']} failed,"
            f" {totals['cancelled']} cancelled"
        )
        header = ("sup", "node", "pid", "run", "deps", "start", "done", "fail", "threads")
        rows = [(*header, "lag p50/p99", "memory", "oldest running")]
        for s in runtime["supervisors"]:
            who = _who(s)
            if "error" in s:
                rows.append((who, "-", "-", *("-",) * 6, "-", "-", s["error"]))
                continue
            lag = s.get("loop_lag_s")
            oldest = s.get("oldest_running") or []
            rows.append(
                (
                    who,
                    str(s.get("node_ip", "?")),
                    str(s.get("pid", "?")),
                    str(s["running"]),
                    str(s["waiting_for_dependencies"]),
                    str(s["waiting_to_start"]),
                    str(s["finished"]),
                    str(s["failed"]),
                    str(s["in_thread_pool"]),
                    f"{lag['p50'] * 1000:.0f}/{lag['p99'] * 1000:.0f} ms" if lag else "off",
                    f"{s.get('rss_bytes', 0) / 2**20:.0f} MiB",
                    ", ".join(f"{c['label']} {_age(c['age_s'])}" for c in oldest[:3]) or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) + 2)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            lines.append("  " + "  ".join(cells + list(row[len(widths) :])).rstrip())
        lines.extend(_blocked_lines(runtime["supervisors"]))
    return "\n".join(lines)


def _blocked_lines(supervisors: list[dict[str, Any]]) -> list[str]:
    """A line per supervisor whose loop is blocked now (every call on it waits), and
    per replacement of a supervisor that died."""
    lines = []
    for s in supervisors:
        who = _who(s)
        if s["generation"]:
            lines.append(
                f"  supervisor {who} replaced one that died ({s['generation']} so far): calls"
                " that had started there failed with SupervisorDiedError, or ran again where"
                " allowed (reruns=; Prefect task runs)"
            )
        blocked = s.get("blocked_now")
        if not blocked:
            continue
        by = f" by {', '.join(blocked['calls'])}" if blocked["calls"] else ""
        at = f" in {blocked['where']}" if blocked["where"] else ""
        lines.append(
            f"  BLOCKED: supervisor {who}'s event loop, for {blocked['seconds']:.0f} s"
            f" so far{by}{at} ({blocked['cause']}); every call on it waits"
        )
    return lines


def _in_a_line(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (Ray's errors run to many lines)."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _who(supervisor: dict[str, Any]) -> str:
    """A supervisor's index, as ``group.index`` outside the default group."""
    index = str(supervisor["index"])
    return f"{supervisor['group']}.{index}" if supervisor["group"] else index


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
