"""Prefect transactions across the process boundary.

Under ``ThreadPoolTaskRunner`` a task submitted inside ``with transaction():``
runs in a thread that sees the flow's transaction (the context variable is
copied into the thread). The task engine opens the task's own transaction as a
child of it; when the task's transaction ends it is handed to the parent
(``parent.add_child``) with its staged result record and its hooks, and a task
that fails rolls the parent back at once (``parent.rollback()``), which runs the
rollback hooks of every task already in it.

Here the task runs in another process, so:

1. **At submit** (flow side), :func:`snapshot` records the chain of open
   transactions: class, commit mode, isolation level, state, the values set
   with ``txn.set``, and the result store (for its lock manager).
2. **In the task's process** (a supervisor, or the Ray worker of a sync task),
   :func:`enter_snapshot` opens stand-ins for that chain, so the task's
   transaction finds its parent, inherits its commit mode and isolation level,
   and reads the parent's values. Prefect's own code runs unchanged.
3. **When it ends**, :func:`outcome` returns, beside the task's final State,
   the transactions the task handed to its parent and whether it rolled the
   parent back. The engine's own rollback hook (the one that marks the task
   run ``RolledBack``) is bound to the engine; it is replaced by
   :class:`MarkRolledBack`, which does the same from the flow's process.
4. **In the flow's process**, :func:`apply_outcome` hands those transactions
   to the real parent and rolls it back if the task did. The flow's
   transaction then commits or rolls back as usual, so **a task's commit and
   rollback hooks run in the flow's process** when the enclosing transaction
   ends, as they do (in the flow's process) under the thread pool. A task whose
   transaction ends on its own (no enclosing transaction, or
   ``commit_mode=EAGER``) commits where it runs.

Refused, with a :class:`TransactionNotPortable` error that fails the task run:
``SERIALIZABLE`` isolation with Prefect's ``MemoryLockManager``, whose locks
exist in one process only (Prefect's docs say so). A ``FileSystemLockManager``
on a directory every node sees, or prefect-redis's lock manager, works.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from contextlib import ExitStack
from typing import Any

from prefect.client.schemas.objects import State
from prefect.transactions import (
    AsyncTransaction,
    BaseTransaction,
    IsolationLevel,
    TransactionState,
    get_transaction,
)

from .compat import with_data


class TransactionNotPortable(RuntimeError):
    """A task cannot take part in a transaction from another process."""


@dataclasses.dataclass(frozen=True)
class HeldResult:
    """Stands in a state's ``data`` for a result left on its supervisor (see held.py)."""

    #: The result record's metadata (storage key, serializer, expiration), if any.
    metadata: Any = None


@dataclasses.dataclass
class TransactionOutcome:
    """What a task run's call returns: its final State, with what it did in its
    enclosing transaction (nothing, outside one)."""

    state: State[Any]
    #: Transactions the task handed to its parent (its own, one per attempt).
    children: list[BaseTransaction]
    #: The task rolled its parent back (it failed inside the transaction).
    rolled_back: bool

    def __aioray_summary__(self) -> TransactionOutcome | None:
        """What the flow receives while the run's result stays on its supervisor
        (the runtime's ``hold_results_above``): this outcome, with the state's
        result record replaced by a :class:`HeldResult`. ``None`` (the outcome then
        travels whole) for a state whose data is not a result record."""
        from prefect.results import ResultRecord  # type: ignore[attr-defined]

        data = self.state.data
        if not isinstance(data, ResultRecord):
            return None
        state = with_data(self.state, HeldResult(data.metadata))
        return TransactionOutcome(state, self.children, self.rolled_back)


def unwrap(outcome: Any) -> Any:
    """The State inside a :class:`TransactionOutcome`, or ``outcome`` itself."""
    return outcome.state if isinstance(outcome, TransactionOutcome) else outcome


# -- flow side, at submit ---------------------------------------------------------------------


def _is_memory_lock_manager(lock_manager: Any) -> bool:
    return type(lock_manager).__name__ == "MemoryLockManager"


def check_task(task: Any) -> None:
    """Refuse a task whose cache policy uses Prefect's in-process lock manager."""
    policy = getattr(task, "cache_policy", None)
    if _is_memory_lock_manager(getattr(policy, "lock_manager", None)):
        raise TransactionNotPortable(
            f"Task {task.name!r} uses Prefect's MemoryLockManager in its cache policy: its"
            " locks exist only in the process that takes them, and AioRayTaskRunner runs"
            " tasks in other processes (supervisors, Ray workers), so they would lock"
            " nothing. Use prefect.locking.filesystem.FileSystemLockManager on a directory"
            " every Ray node shares, or prefect-redis's RedisLockManager."
        )


def snapshot() -> list[dict[str, Any]] | None:
    """The open transactions in this context, outermost first, as they travel."""
    current = get_transaction()
    if current is None:
        return None
    chain: list[BaseTransaction] = []
    while current is not None:
        chain.append(current)
        current = current.get_parent()
    return [_snapshot_one(txn) for txn in reversed(chain)]


def _snapshot_one(txn: BaseTransaction) -> dict[str, Any]:
    store = txn.store
    if store is not None and _is_memory_lock_manager(getattr(store, "lock_manager", None)):
        if txn.isolation_level == IsolationLevel.SERIALIZABLE:
            raise TransactionNotPortable(
                f"The transaction {txn.key!r} is SERIALIZABLE with Prefect's"
                " MemoryLockManager: its locks exist only in the flow's process, and"
                " AioRayTaskRunner runs tasks in other processes (supervisors, Ray"
                " workers), where they would lock nothing. Give the transaction's store"
                " a prefect.locking.filesystem.FileSystemLockManager on a directory every"
                " Ray node shares, or prefect-redis's RedisLockManager."
            )
        store = store.model_copy(update={"lock_manager": None})  # never used: not serializable
    return {
        "cls": type(txn),
        "store": store,
        "commit_mode": txn.commit_mode,
        "isolation_level": txn.isolation_level,
        "state": txn.state,
        "overwrite": txn.overwrite,
        "write_on_commit": txn.write_on_commit,
        "values": copy.deepcopy(txn._stored_values),
    }


# -- the task's process ------------------------------------------------------------------------


@dataclasses.dataclass
class Entered:
    """The stand-in for the task's enclosing transaction, entered in its process."""

    parent: BaseTransaction
    state_before: TransactionState


def enter_snapshot(stack: ExitStack, chain: list[dict[str, Any]] | None) -> Entered | None:
    """Open stand-ins for the flow's transactions in this context (closed by ``stack``)."""
    if not chain:
        return None
    parent: BaseTransaction | None = None
    for entry in chain:
        # No key: a stand-in never commits, and must not release the real
        # transaction's lock when the task rolls it back (the flow does that).
        parent = entry["cls"](
            store=entry["store"],
            commit_mode=entry["commit_mode"],
            isolation_level=entry["isolation_level"],
            state=entry["state"],
            overwrite=entry["overwrite"],
            write_on_commit=entry["write_on_commit"],
        )
        parent._stored_values = dict(entry["values"])
        token = BaseTransaction.__var__.set(parent)
        parent._token = token
        stack.callback(BaseTransaction.__var__.reset, token)
    assert parent is not None
    return Entered(parent, parent.state)


def outcome(state: Any, entered: Entered | None) -> Any:
    """What the task's call returns: its State, with what it did in the transaction."""
    if not isinstance(state, State):
        return state
    if entered is None:
        return TransactionOutcome(state, [], False)
    parent = entered.parent
    rolled_back = (
        parent.state == TransactionState.ROLLED_BACK
        and entered.state_before != TransactionState.ROLLED_BACK
    )
    children = [_portable(child) for child in parent.children]
    return TransactionOutcome(state, children, rolled_back)


def _portable(txn: BaseTransaction) -> BaseTransaction:
    txn.on_rollback_hooks = [_portable_hook(hook) for hook in txn.on_rollback_hooks]
    txn.children = [_portable(child) for child in txn.children]
    txn._token = None
    return txn


def _portable_hook(hook: Any) -> Any:
    # The task engine stages `partial(engine.handle_rollback)`: bound to an
    # engine (API client, locks), which cannot travel.
    if isinstance(hook, functools.partial):
        engine = getattr(hook.func, "__self__", None)
        if getattr(hook.func, "__name__", "") == "handle_rollback" and engine is not None:
            return MarkRolledBack(engine.task_run, engine.state, engine._last_event)
    return hook


class MarkRolledBack:
    """The task engine's ``handle_rollback``, run in the flow's process: emits the
    state-change event that makes the task run ``RolledBack`` in the API."""

    log_on_run = False  # as the engine's own hook: not a user hook, not logged
    __name__ = "handle_rollback"

    def __init__(self, task_run: Any, state: Any, last_event: Any) -> None:
        self.task_run = task_run
        self.state = state
        self.last_event = last_event

    def __call__(self, txn: BaseTransaction) -> None:
        from prefect.states import Completed
        from prefect.utilities.engine import emit_task_run_state_change_event

        rolled_back: State[Any] = Completed(
            name="RolledBack", message="Task rolled back as part of transaction"
        )
        self.last_event = emit_task_run_state_change_event(
            task_run=self.task_run,
            initial_state=self.state,
            validated_state=rolled_back,
            follows=self.last_event,
        )


# -- flow side, when the task run's outcome arrives --------------------------------------------


def attach(parent: BaseTransaction, result: TransactionOutcome) -> None:
    """Hand the task's transactions to the flow's (as the task's own reset does)."""
    for child in result.children:
        parent.add_child(child)


def roll_back(parent: BaseTransaction, result: TransactionOutcome) -> None:
    """Roll the flow's transaction back if the task did (in the waiting thread)."""
    if not result.rolled_back:
        return
    rolled = parent.rollback()  # type: ignore[attr-defined]  # on both subclasses
    if isinstance(parent, AsyncTransaction):
        from prefect.utilities.asyncutils import run_coro_as_sync

        run_coro_as_sync(rolled)  # type: ignore[arg-type]
