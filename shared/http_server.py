"""uvicorn inside a service whose process stops it by cancellation.

`loraswarm serve` turns SIGTERM and SIGINT into cancelling the services' tasks (one handler for
the process, so `serve all` stops every service alike). uvicorn must then neither install its own
signal handlers (it re-raises SIGTERM after its shutdown, ending the process before the bus
commits and the spans are flushed) nor drop the requests in flight: `serve_until_cancelled`
turns the cancellation into uvicorn's own graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn


class Server(uvicorn.Server):
    """uvicorn without its signal handling (the process that embeds it keeps its own)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_until_cancelled(server: uvicorn.Server) -> None:
    """Serve; when cancelled, finish the requests in flight, then stop and re-raise."""
    serving = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise
