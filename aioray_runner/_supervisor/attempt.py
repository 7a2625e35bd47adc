"""``current_attempt()``: which run of a call this is, inside the call."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class Attempt:
    """Which run of a call this is: see :func:`current_attempt`.

    Attributes:
        number: 1 for the first run; 2 and up for runs after a supervisor died
            while an earlier run may have been under way.
        previous_loss: Why the previous run was lost (which supervisor died, and
            how), or ``""`` on the first run.
        lost_at: When the caller learned of that loss (a ``time.time()`` of the
            caller's clock), or ``0.0`` on the first run. Work the lost run had
            sent out shortly before (a message to a service, say) may still be
            arriving there.
    """

    number: int = 1
    previous_loss: str = ""
    lost_at: float = 0.0


_FIRST_ATTEMPT = Attempt()
_attempt: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "aioray_attempt", default=None
)


def current_attempt() -> Attempt:
    """Which run of the current call this is (inside a call on a supervisor).

    A call runs once, unless it was submitted with ``reruns=`` (see
    :meth:`Runtime.submit_call`) and its supervisor died while it may have been
    running: it then runs again elsewhere, and ``current_attempt().number`` is
    2 or more. Code with side effects can check what the earlier run did.
    """
    return _attempt.get() or _FIRST_ATTEMPT


def set_attempt(attempt: Attempt) -> None:
    """Say, in the current context, which run of its call this is (a rerun's task)."""
    _attempt.set(attempt)
