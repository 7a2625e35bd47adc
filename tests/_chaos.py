"""The chaos scenario, shared by tests/test_chaos.py and benchmarks/bench_faults.py.

A seeded :class:`Killer` SIGKILLs a random live supervisor every few seconds
while a long Prefect flow (:func:`chaos_flow`) runs waves of async tasks, sync
tasks in supervisor threads, sync tasks as Ray tasks and chained pairs, all with
``retries``. Every task body appends what it did to a ledger file (one short
``write`` in append mode: whole lines, even from several processes), and
:func:`check_prefect_chaos` judges the run by what a user would look at: each
task run's final state in the flow and in the API, its state history, and the
ledger. Supervisors and Ray workers import this module (tasks pickle by
reference): keep it free of side effects.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def note(ledger: str, what: str, key: str, attempt: int) -> None:
    """Append ``what key attempt pid time`` to the ledger."""
    line = f"{what} {key} {attempt} {os.getpid()} {time.time():.3f}\n"
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass
class Entry:
    what: str  # "start" or "finish"
    attempt: int
    pid: int
    at: float


def read_ledger(path: str | Path) -> dict[str, list[Entry]]:
    """key -> its entries, in the order written."""
    runs: dict[str, list[Entry]] = defaultdict(list)
    for line in Path(path).read_text().splitlines():
        what, key, attempt, pid, at = line.split()
        runs[key].append(Entry(what, int(attempt), int(pid), float(at)))
    return runs


class Killer:
    """SIGKILLs one of ``pids()`` at random every ``every`` seconds, ``kills`` times.

    Starts ``first`` seconds after ``start()``. ``killed`` holds ``(time.time(), pid)``.
    """

    def __init__(
        self,
        pids: Callable[[], list[int]],
        kills: int,
        every: float,
        *,
        first: float | None = None,
        seed: int = 20261203,
    ) -> None:
        self.pids, self.kills, self.every = pids, kills, every
        self.first = every if first is None else first
        self.rng = random.Random(seed)
        self.killed: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-killer", daemon=True)

    def start(self) -> Killer:
        if self.kills:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        wait = self.first
        while len(self.killed) < self.kills and not self._stop.wait(wait):
            wait = 0.1  # no live supervisor yet: look again soon
            dead = {pid for _, pid in self.killed}
            candidates = sorted(set(self.pids()) - dead)
            if not candidates:
                continue
            victim = self.rng.choice(candidates)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed.append((time.time(), victim))
            wait = self.every


# -- the Prefect flow ---------------------------------------------------------------------


@dataclass
class Shape:
    """How many task runs of each kind one wave has, and how long each sleeps."""

    waves: int = 4
    io: int = 60  # async tasks
    threads: int = 40  # sync tasks in supervisor threads
    ray_tasks: int = 0  # sync tasks as Ray tasks (remote_options)
    pairs: int = 20  # chained async pairs
    io_s: float = 2.0
    sync_s: float = 1.0
    pair_s: float = 1.0

    @property
    def per_wave(self) -> int:
        return self.io + self.threads + self.ray_tasks + 2 * self.pairs


def _task_key() -> tuple[str, int]:
    from prefect.runtime import task_run

    return str(task_run.id), int(task_run.run_count)


def _make_tasks() -> dict[str, Any]:
    from prefect import task

    @task(retries=3, name="io")
    async def io(ledger: str, seconds: float) -> str:
        key, attempt = _task_key()
        note(ledger, "start", key, attempt)
        await asyncio.sleep(seconds)
        note(ledger, "finish", key, attempt)
        return key

    @task(retries=3, name="sync")
    def sync(ledger: str, seconds: float) -> str:
        key, attempt = _task_key()
        note(ledger, "start", key, attempt)
        time.sleep(seconds)
        note(ledger, "finish", key, attempt)
        return key

    @task(retries=3, name="tail")
    async def tail(ledger: str, up: str, seconds: float) -> str:
        key, attempt = _task_key()
        note(ledger, "start", key, attempt)
        await asyncio.sleep(seconds)
        note(ledger, "finish", key, attempt)
        return f"{up}>{key}"

    # A chain's first task: an async task of its own name (the API tells them apart).
    head = io.with_options(name="head")
    return {"io": io, "sync": sync, "head": head, "tail": tail}


TASKS = _make_tasks()


@dataclass
class ChaosRun:
    """What one chaos flow saw: its states by task run, kills, times."""

    states: dict[uuid.UUID, tuple[str, str | None]]  # task run id -> (type, name)
    killed: list[tuple[float, int]]
    supervisor_pids: set[int]
    flow_run_id: uuid.UUID
    began: float
    ended: float
    waves_s: list[float] = field(default_factory=list)


def run_chaos_flow(
    ledger: str, shape: Shape, kills: int, every: float, runner: Any, first: float = 2.0
) -> ChaosRun:
    """Run the chaos flow under ``runner`` (an AioRayTaskRunner), killing ``kills`` times."""
    from prefect import flow
    from prefect.context import FlowRunContext

    from aioray_runner import remote_options

    @flow(task_runner=runner, name="chaos")
    def chaos() -> ChaosRun:
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        runner_now: Any = context.task_runner
        live = runner_now._runtime  # this flow run's runtime (a test's liberty)
        seen: set[int] = set()

        def pids() -> list[int]:
            found = [i["pid"] for i in live.supervisor_info() if i.get("pid")]
            seen.update(found)
            return found

        pids()
        killer = Killer(pids, kills, every, first=first).start()
        began = time.time()
        futures: list[Any] = []
        waves_s: list[float] = []
        try:
            for _ in range(shape.waves):
                started = time.time()
                wave = [TASKS["io"].submit(ledger, shape.io_s) for _ in range(shape.io)]
                wave += [TASKS["sync"].submit(ledger, shape.sync_s) for _ in range(shape.threads)]
                with remote_options(num_cpus=0.25):
                    wave += [
                        TASKS["sync"].submit(ledger, shape.sync_s) for _ in range(shape.ray_tasks)
                    ]
                for _ in range(shape.pairs):
                    up = TASKS["head"].submit(ledger, shape.pair_s)
                    wave += [up, TASKS["tail"].submit(ledger, up, shape.pair_s)]
                for future in wave:
                    future.wait()
                pids()
                waves_s.append(time.time() - started)
                futures += wave
        finally:
            killer.stop()
        states = {f.task_run_id: (f.state.type.value, f.state.name) for f in futures}
        return ChaosRun(
            states,
            killer.killed,
            seen,
            context.flow_run.id,
            began,
            time.time(),
            waves_s,
        )

    return chaos()


@dataclass
class Verdict:
    """How a chaos run compares with what a user must see (see check_prefect_chaos)."""

    task_runs: int
    final: int
    completed: int
    api_disagrees: list[str]
    restarted_after_finishing: list[str]
    unexplained_reruns: list[str]
    states: Counter[str]

    @property
    def completed_share(self) -> float:
        return self.completed / self.task_runs if self.task_runs else 0.0

    def problems(self) -> list[str]:
        found = []
        if self.final != self.task_runs:
            found.append(f"{self.task_runs - self.final} task run(s) not final in the flow")
        for name, items in (
            ("the API disagrees with the flow", self.api_disagrees),
            ("restarted after finishing (API history)", self.restarted_after_finishing),
            ("a body ran more often than the API shows runs", self.unexplained_reruns),
        ):
            if items:
                found.append(f"{name}: {len(items)}, e.g. {items[:3]}")
        return found


def check_prefect_chaos(run: ChaosRun, ledger: str, *, within: float = 60.0) -> Verdict:
    """Compare the flow, the API and the ledger (see the module docstring).

    The API records states from events a moment after they happen: it is read
    until it agrees or ``within`` seconds pass.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    final_types = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    deadline = time.monotonic() + within
    with get_client(sync_client=True) as client:
        while True:
            api: dict[uuid.UUID, Any] = {}
            offset = 0
            while True:
                page = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.flow_run_id])),
                    limit=200,
                    offset=offset,
                )
                api.update({r.id: r for r in page})
                offset += len(page)
                if len(page) < 200:
                    break
            disagree = [
                f"{tid}: flow {want}, API {seen}"
                for tid, want in run.states.items()
                if (seen := _state_of(api.get(tid))) != want
            ]
            if not disagree or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        runs_by_key = read_ledger(ledger)
        restarted, unexplained = [], []
        for tid in run.states:
            recorded = client.read_task_run_states(tid)
            history = [s.type.value for s in recorded]
            finals = [i for i, t in enumerate(history) if t in ("COMPLETED", "FAILED")]
            if finals and finals[0] != len(history) - 1:
                restarted.append(f"{tid}: {history}")
            # A run lost with its supervisor may have sent no state at all (its
            # events died with it), but the rerun says it in the API: its
            # AwaitingRetry's message counts the runs lost ("Retry 2 of 3 after
            # a crash": two runs before this one).
            lost = [
                int(m.group(1))
                for st in recorded
                if st.name == "AwaitingRetry"
                and (m := re.search(r"Retry (\d+) of \d+ after a crash", st.message or ""))
            ]
            shown = max(history.count("RUNNING"), max(lost, default=0) + 1)
            starts = sum(1 for e in runs_by_key.get(str(tid), []) if e.what == "start")
            if starts > shown:
                unexplained.append(f"{tid}: {starts} starts, history {history}")
    states = Counter(t for t, _ in run.states.values())
    return Verdict(
        task_runs=len(run.states),
        final=sum(n for t, n in states.items() if t in final_types),
        completed=states["COMPLETED"],
        api_disagrees=disagree,
        restarted_after_finishing=restarted,
        unexplained_reruns=unexplained,
        states=states,
    )


def _state_of(task_run: Any) -> tuple[str, str | None] | None:
    """``(type, name)`` of a task run's state in the API (None: no run, or no state yet)."""
    if task_run is None or task_run.state is None:
        return None
    return task_run.state.type.value, task_run.state.name
