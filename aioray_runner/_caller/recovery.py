"""After a supervisor died: a replacement, the lost calls failed, the rest sent on.

A supervisor announces every call before it starts it (its start gate,
``_supervisor/gate.py``), so the call ledger knows which calls on a dead
supervisor may have started: those fail with :class:`SupervisorDiedError` (or
run again, if submitted with ``reruns``). Every other one never ran, and is sent
to a live supervisor as it is: nothing that never started is lost. A call that a
live supervisor hands back because an upstream's supervisor died is sent again
with its dependencies lifted afresh. A group whose supervisors keep failing in
their constructor (three in a row, none of the group left running) is given up:
its calls fail, and so does every later submission to it, instead of a new
supervisor every half second for ever. Everything here runs on the I/O thread.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from typing import Any

from .._common import wire
from ..errors import SupervisorDiedError, UpstreamError
from .futures import AioRayFuture, fail
from .iothread import IOThread, wait_ref
from .ledger import CallLedger
from .outbox import Parcel
from .sending import Sender
from .supervisors import RemoteSupervisor, Supervisors

# A call whose upstream's supervisor died is sent again; a few times at most, in
# case the upstream keeps moving (each move is a supervisor death).
MAX_SENDS = 5
#: Supervisors of a group that die in a row before they answer once: then the
#: group is not replaced any more (an import error in ``preload``, a runtime_env
#: that cannot be built, a node that kills every process: a new one would die too).
MAX_FAILED_STARTS = 3


class Recovery:
    """Handles supervisor deaths for one pool (see the module docstring).

    ``closed`` says whether the runtime has closed: then a death changes nothing.
    """

    def __init__(
        self,
        supervisors: Supervisors,
        ledger: CallLedger[AioRayFuture[Any], Parcel],
        sender: Sender,
        io: IOThread,
        logger: logging.Logger,
        *,
        closed: Callable[[], bool],
    ) -> None:
        self.supervisors = supervisors
        self.ledger = ledger
        self.sender = sender
        self.io = io
        self.logger = logger
        self._closed = closed
        # Constructor failures in a row, by (group, index): see on_death.
        self._failed_starts: dict[tuple[Any, int], int] = {}

    def on_death(self, supervisor: RemoteSupervisor, exc: BaseException) -> None:
        """``supervisor`` died (a failed poll or message): see the module docstring."""
        if not supervisor.alive or self._closed():
            return
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        group = supervisor.group
        if broken := self.supervisors.broken.get(group):
            self._give_up(supervisor, broken)
            return
        key = (group, supervisor.index)
        if supervisor.info:  # it had started
            self._failed_starts.pop(key, None)
        elif _failed_in_constructor(exc):
            failed = self._failed_starts[key] = self._failed_starts.get(key, 0) + 1
            others = [s for s in self.supervisors.live(group) if s is not supervisor and s.info]
            if failed >= MAX_FAILED_STARTS and not others:
                self._give_up(supervisor, _gave_up(cause))
                return
        # Put the replacement in place before failing any future: a caller woken
        # by the failure may submit again at once.
        replacement = self.supervisors.replace(supervisor)
        self.io.spawn(self._describe(replacement))

        # Calls announced (may have started) are lost, unless they may run
        # again; the rest never ran.
        death = self.ledger.died(supervisor, f"{supervisor.describe()} died ({cause})")
        self.logger.warning(
            "%s died (%s). %d call(s) that had started on it failed; %d were sent to"
            " %s (%d that had not started, %d allowed to run again). A replacement takes"
            " its place.",
            supervisor.describe(),
            cause,
            len(death.lost),
            len(death.resend),
            "other supervisors"
            if len(self.supervisors.live(supervisor.group)) > 1
            else "the replacement",
            death.never_started,
            death.rerun,
        )
        # Fail the lost calls first: a dependent sent again below then carries
        # its upstream's failure instead of waiting on the dead supervisor.
        for future in death.lost:
            fail(
                future,
                SupervisorDiedError(
                    f"{future.label} was lost: {supervisor.describe()} died while running it"
                    f" ({cause}). Later calls run on a replacement supervisor; resubmit"
                    " this one if it is safe to run again."
                ),
            )
        self.sender.dispatch(death.resend, relift=True)

    def send_again(
        self, supervisor: RemoteSupervisor, parcel: Parcel, payload: bytes | None
    ) -> None:
        """A call could not start on ``supervisor``: an upstream's supervisor died."""
        future = parcel[0]
        index, owner = pickle.loads(payload) if payload else wire.ResendReason(0, None)
        sends = self.ledger.count_send(future.call_id)
        upstream = parcel[5][index] if index < len(parcel[5]) else None
        if sends > MAX_SENDS:
            self.ledger.forget(future.call_id)
            where = upstream.label if upstream is not None else "an upstream call"
            fail(
                future,
                UpstreamError(
                    f"{future.label} cannot start: the supervisor holding {where} died"
                    f" {MAX_SENDS} times while it waited for it",
                    where,
                ),
            )
            return
        if supervisor.alive:
            supervisor.assign()  # it may go back to the same supervisor: count it again
        if owner is not None:
            # Ray told that supervisor the owner is dead; our own poll on it may
            # not have failed yet. Act on it now, so the upstream's outcome is
            # settled (held here, moved, or lost) before this call is lifted again.
            for dead in self.supervisors.every():
                if dead.actor_id == owner:
                    self.on_death(dead, RuntimeError(f"reported dead by {supervisor.describe()}"))
            self.sender.dispatch([parcel], relift=True)
        else:
            # The upstream is itself being sent again; its news may reach us
            # through another supervisor's poll a moment later.
            self.io.call_later(0.05, lambda: self.sender.dispatch([parcel], relift=True))

    def _give_up(self, supervisor: RemoteSupervisor, reason: str) -> None:
        """Supervisors of this group keep failing as they start: fail its calls."""
        self.supervisors.give_up(supervisor, reason)
        death = self.ledger.died(supervisor, reason)
        doomed = [*death.lost, *(parcel[0] for parcel in death.resend)]
        for parcel in death.resend:
            self.ledger.forget(parcel[0].call_id)
        self.logger.error("%s; %d call(s) failed.", reason, len(doomed))
        for future in doomed:
            fail(future, SupervisorDiedError(f"{future.label} cannot run: {reason}."))

    async def _describe(self, supervisor: RemoteSupervisor) -> None:
        try:
            supervisor.info = await wait_ref(supervisor.handle.info.remote())
            self._failed_starts.pop((supervisor.group, supervisor.index), None)
            self.logger.info("Replacement %s is ready", supervisor.describe())
        except Exception as exc:
            self.on_death(supervisor, exc)


def _failed_in_constructor(exc: BaseException) -> bool:
    """Whether a supervisor died starting (its constructor raised, its runtime_env
    could not be built), not later: only those count towards giving a group up."""
    from ray.exceptions import RuntimeEnvSetupError

    if isinstance(exc, RuntimeEnvSetupError):
        return True
    return bool(getattr(exc, "actor_init_failed", False))


def _gave_up(cause: str) -> str:
    return (
        f"{MAX_FAILED_STARTS} supervisors in a row failed as they started (the last:"
        f" {cause}), so no more are started for these calls. Look for the cause in the"
        " supervisors' logs (Ray's dashboard, or /tmp/ray/session_latest/logs): a module"
        " in `preload` that fails to import, a runtime_env that cannot be built"
    )
