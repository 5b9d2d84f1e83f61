"""Running a generation for one HTTP exchange: a client that goes away cancels it, and it is always closed."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from diffusiongemma_sdk._wire.sse import sse_data
from diffusiongemma_sdk.server._errors import server_error_from

__all__ = ["EventStreamResponse", "until_disconnected"]

T = TypeVar("T")
CLOSE_TIMEOUT = 10.0  # seconds a stopped backend stream gets to release what it holds


async def until_disconnected(receive: Receive, work: Callable[[], Awaitable[T]]) -> T | None:
    """`await work()`, cancelled if the client disconnects first (then None). Call after the body was read."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    async def run(scope: anyio.CancelScope) -> None:
        try:
            outcome.append(await work())
        except Exception as exc:
            failure.append(exc)
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
        await run(group.cancel_scope)
    if failure:
        raise failure[0]
    return outcome[0] if outcome else None


class EventStreamResponse(Response):
    """A `text/event-stream` response fed by an async generator of SSE bytes.

    The status line waits for the first chunk, so a generation that fails before producing anything is answered
    with a JSON error and its HTTP status; a failure later goes out as a `data: {"error": ...}` event (what OpenAI's
    clients raise). A client disconnect cancels the generator, which is closed in every case.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncGenerator[bytes, None]) -> None:
        self._chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
                await self._send_chunks(scope, receive, send)
                group.cancel_scope.cancel()
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self._chunks.aclose()

    async def _send_chunks(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        try:
            async for chunk in self._chunks:
                if not started:
                    started = True
                    await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:
            error = server_error_from(exc)
            if not started:
                await error.response()(scope, receive, send)
                return
            await send({"type": "http.response.body", "body": sse_data(error.payload()), "more_body": True})
        if not started:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
