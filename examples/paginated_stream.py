"""A paginated API read page by page on a supervisor, each page handed over as it arrives.

A tiny JSON API runs on 127.0.0.1 in this process (60 pages, 20 ms each, like a
slow remote service). ``pages`` is an async generator that walks it with ``next``
links; ``rt.stream`` runs it on a supervisor and the loop below gets each page
while the next is being fetched. The supervisor runs at most ``max_buffered``
pages ahead of this consumer.

Run it with ``python examples/paginated_stream.py`` (a temporary local Ray, no setup).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from aioray_runner import Runtime

PAGES = 60


class PagedAPI(BaseHTTPRequestHandler):
    """``GET /items?page=N``: ten items and the link to the next page."""

    def do_GET(self) -> None:  # the name http.server calls
        page = int(parse_qs(urlparse(self.path).query).get("page", ["0"])[0])
        time.sleep(0.02)  # a slow service
        body = {
            "items": [page * 10 + i for i in range(10)],
            "next": f"/items?page={page + 1}" if page + 1 < PAGES else None,
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass  # quiet


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        result: dict[str, Any] = json.load(response)
        return result


async def pages(base: str) -> AsyncIterator[list[int]]:
    """Every page's items, fetched one after another, yielded as each arrives."""
    path: str | None = "/items?page=0"
    while path is not None:
        # urllib blocks: a thread keeps the supervisor's loop free for other calls.
        page = await asyncio.to_thread(get_json, base + path)
        yield page["items"]
        path = page["next"]


async def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PagedAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        async with Runtime(supervisors=1) as rt:
            started = time.perf_counter()
            first_at = None
            total = 0
            async with rt.stream_call(pages, (base,), max_buffered=8) as stream:
                async for items in stream:
                    if first_at is None:
                        first_at = time.perf_counter() - started
                    total += sum(items)
            took = time.perf_counter() - started
            assert total == sum(range(PAGES * 10)), total
            print(
                f"{PAGES} pages streamed in {took:.2f} s; the first arrived after"
                f" {first_at:.2f} s, while the rest were still being fetched"
            )
    finally:
        server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
