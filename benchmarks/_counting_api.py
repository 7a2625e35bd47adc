"""Prefect's API server, counting what reaches it: ``uvicorn --factory _counting_api:create_app``.

Every HTTP request is counted by method and path (ids replaced by ``{id}``),
with the bytes of its body; every message a websocket sends in (Prefect's
events arrive on ``/api/events/in``) is counted the same way. ``GET
/_counts`` returns the counts so far; ``POST /_counts/reset`` starts again.
Used by ``bench_requests.py`` only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

_ID = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Scope = dict[str, Any]


class Counting:
    """An ASGI app around another that counts its requests (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: Counter[str] = Counter()
        self.bytes_in: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = _ID.sub("/{id}", scope["path"])
        if path.startswith("/_counts"):
            await self._answer(scope, receive, send, reset=path.endswith("/reset"))
            return
        kind = "WS" if scope["type"] == "websocket" else scope["method"]
        key = f"{kind} {path}"
        if kind != "WS":
            self.requests[key] += 1

        async def counted_receive() -> Any:
            message = await receive()
            body = message.get("bytes") or message.get("text") or message.get("body") or b""
            if body:
                self.bytes_in[key] += len(body)
            if message["type"] == "websocket.receive":
                self.requests[key] += 1
            return message

        await self.app(scope, counted_receive, send)

    async def _answer(self, scope: Scope, receive: Any, send: Any, *, reset: bool) -> None:
        body = json.dumps({"requests": self.requests, "bytes_in": self.bytes_in}).encode()
        if reset:
            self.requests, self.bytes_in = Counter(), Counter()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app() -> Counting:
    """Prefect's own API app, counted."""
    from prefect.server.api.server import create_app as prefect_app

    return Counting(prefect_app())
