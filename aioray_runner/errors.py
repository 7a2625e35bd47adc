"""The exceptions aioray-runner raises itself.

An exception raised *by your coroutine* is not wrapped: awaiting its future raises
the same exception type, with the remote traceback attached as a note (see
:pep:`678`). The classes here cover what goes wrong around your code.
"""

from __future__ import annotations

import concurrent.futures

__all__ = [
    "AioRayError",
    "CancelledError",
    "InvalidCallError",
    "RayLostError",
    "RemoteError",
    "RuntimeNotRunningError",
    "SerializationError",
    "SupervisorDiedError",
    "UpstreamError",
]


class AioRayError(Exception):
    """Base class of every error raised by aioray-runner itself."""


class SerializationError(AioRayError, TypeError):
    """A function, argument or result cannot be pickled.

    Raised by :meth:`Runtime.submit` before anything is sent, so the call never
    starts; the message names the argument that failed. A result that cannot be
    pickled fails only its own call.
    """


class InvalidCallError(AioRayError, TypeError):
    """``submit`` (or ``map``, ``broadcast``, ``stream``) was given something it cannot run.

    Raised at once, before anything is sent: for a value that is not callable, a
    coroutine object (``submit(fetch(1))`` instead of ``submit(fetch, 1)``), a
    generator or async generator, or, for ``submit``, a function that makes one
    (``stream`` runs those), and for ``stream`` a function that does not. The
    message names the culprit by its type or name, never by its value, and says
    what to pass instead.
    """


class UpstreamError(AioRayError):
    """A call could not start because a future in its arguments failed.

    ``upstream`` names the failed call (``"fetch#17"``) and the message repeats
    the upstream error, so the root cause is visible without chasing futures.
    """

    def __init__(self, message: str, upstream: str = "") -> None:
        super().__init__(message, upstream)
        self.upstream = upstream

    def __str__(self) -> str:
        return str(self.args[0])


class SupervisorDiedError(AioRayError):
    """The supervisor actor running a call died (its process exited or was killed).

    Every call in flight on that supervisor that may have started fails with
    this error (unless submitted with ``reruns``); later submissions run on a
    replacement supervisor. Resubmit the call if it is safe to run again.

    Also raised by ``submit`` when the supervisors of a group keep failing as
    they start (a module in ``preload`` that fails to import, say): the message
    says so, and where to look.
    """


class RayLostError(SupervisorDiedError):
    """Ray itself went away (its GCS server or this machine's raylet died).

    Every call in flight fails with this error within about a second, instead
    of hanging until Ray ends the process; the message says what went away.
    The runtime cannot run anything more: close it, and start a new one once
    Ray is back. A subclass of :class:`SupervisorDiedError`: the supervisors
    went with Ray.
    """


class RemoteError(AioRayError):
    """Stands in for a remote exception that could not be sent back as itself.

    Some exceptions cannot be pickled, or cannot be rebuilt from their ``args``.
    The original type name, message and traceback text are kept.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class CancelledError(AioRayError, concurrent.futures.CancelledError):
    """The call was cancelled with :meth:`AioRayFuture.cancel`.

    This is deliberately *not* :class:`asyncio.CancelledError`: awaiting a
    cancelled call must not look like a cancellation of the awaiting task.
    """


class RuntimeNotRunningError(AioRayError, RuntimeError):
    """The runtime was used before ``start()``/``async with`` or after it closed."""
