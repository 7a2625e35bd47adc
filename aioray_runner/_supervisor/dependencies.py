"""A call's dependencies, awaited on the supervisor before the call takes a permit.

Values sent inline, ObjectRefs, and futures of this runtime: on this supervisor
(read from memory) or on another (its ``result_of``). A dependency whose
supervisor died hands the call back to the caller (:class:`Resend`), which
knows where that upstream's outcome is now.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._common import wire
from ..errors import SupervisorDiedError, UpstreamError
from .calls import CallRecord, Resend


class Dependencies:
    """Resolves dependencies for one supervisor.

    ``arrived(call_id)`` is a call of this supervisor, once it arrived;
    ``actor_id()`` is this supervisor's actor id (known once it started).
    """

    def __init__(
        self,
        arrived: Callable[[int], Awaitable[CallRecord]],
        actor_id: Callable[[], Any],
    ) -> None:
        self._arrived = arrived
        self._actor_id = actor_id
        #: Calls waiting for their dependencies now (``aioray-runner status``).
        self.waiting = 0

    async def resolve(self, deps: Sequence[Any], label: str) -> list[Any]:
        """The values of a call's dependencies, in order (raises ``UpstreamError``
        for one that failed, ``Resend`` for one that moved)."""
        self.waiting += 1
        try:
            if len(deps) == 1:
                return [await self._resolve_one(deps[0], label, 0)]
            return list(
                await asyncio.gather(
                    *(self._resolve_one(dep, label, i) for i, dep in enumerate(deps))
                )
            )
        finally:
            self.waiting -= 1

    async def _resolve_one(self, dep: Sequence[Any], label: str, index: int) -> Any:
        kind, handle, call_id, upstream = dep
        if kind == wire.VALUE_DEP:
            return pickle.loads(handle)
        if kind == wire.FAILED_DEP:
            raise UpstreamError(f"{label} cannot start: {handle}", upstream)
        if kind == wire.REF_DEP:
            try:
                return await handle
            except Exception as exc:
                raise UpstreamError(
                    f"{label} cannot start: its argument {upstream} failed: {exc}", upstream
                ) from None
        owner = handle._actor_id.hex()
        if owner == self._actor_id():
            record = await self._arrived(call_id)
            outcome_kind, payload = await record.wait()
        else:
            try:
                outcome_kind, payload = await handle.result_of.remote(call_id)
            except Exception as exc:
                import ray

                if isinstance(exc, ray.exceptions.RayActorError):
                    # The upstream's supervisor died. This call has not started,
                    # so the caller can send it again once it knows where the
                    # upstream's outcome is now (see Resend).
                    raise Resend(index, owner) from None
                raise UpstreamError(
                    f"{label} cannot start: the result of {upstream} could not be fetched:"
                    f" {type(exc).__name__}: {exc}",
                    upstream,
                ) from None
        if outcome_kind == wire.RESEND:
            raise Resend(index, None)  # the upstream itself is being sent again
        if outcome_kind == wire.OK:
            return pickle.loads(payload) if payload else None
        error = (
            wire.loads_exception(payload, upstream)
            if outcome_kind == wire.ERROR and payload
            else None
        )
        if outcome_kind == wire.CANCELLED:
            raise UpstreamError(f"{label} cannot start: {upstream} was cancelled", upstream)
        if isinstance(error, SupervisorDiedError | UpstreamError):
            raise UpstreamError(f"{label} cannot start: {error}", upstream)
        raise UpstreamError(
            f"{label} cannot start: {upstream} failed with {type(error).__name__}: {error}",
            upstream,
        )
