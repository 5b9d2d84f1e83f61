"""One SDK client per configuration, on an event loop of its own, shared by every call of every chat model using it.

LangChain calls a chat model from plain threads (`invoke`, LangGraph's sync nodes, `batch`'s thread pool) and from
any event loop (`ainvoke`, `abatch`). A local engine's state belongs to one loop, so the client lives on a private
loop in a daemon thread and every call, sync or async, runs there: concurrent calls meet in the engine, which batches
them. Chat models with the same settings (copies made by `configurable_fields`, say) share one client.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from diffusiongemma_sdk import AsyncDiffusionGemma, GenerationStream, StreamEvent

__all__ = ["ClientThread", "shared_client_thread"]

T = TypeVar("T")
StreamOpener = Callable[[AsyncDiffusionGemma], GenerationStream]
CLOSE_TIMEOUT = 30.0

_SHARED: weakref.WeakValueDictionary[Any, ClientThread] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def shared_client_thread(key: Any, make_client: Callable[[], AsyncDiffusionGemma]) -> ClientThread:
    """The `ClientThread` of a configuration (`key`), made on first use; it lives while a chat model holds it."""
    with _SHARED_LOCK:
        thread = _SHARED.get(key)
        if thread is None:
            thread = _SHARED[key] = ClientThread(make_client)
        return thread


class ClientThread:
    """An `AsyncDiffusionGemma`, made on first use by `make_client` on a private event loop, and ways to run its
    calls from any thread or loop. The client is closed and the loop stopped when this object is collected."""

    def __init__(self, make_client: Callable[[], AsyncDiffusionGemma]) -> None:
        self._make_client = make_client
        self._state = _LoopState()
        self._finalizer = weakref.finalize(self, self._state.shut_down)

    @property
    def client(self) -> AsyncDiffusionGemma | None:
        """The client, once a call has made it."""
        return self._state.client

    async def run(self, call: Callable[[AsyncDiffusionGemma], Awaitable[T]]) -> T:
        """`await call(client)` on the client's loop, from a coroutine on another loop (cancelling it cancels the
        call)."""
        return await asyncio.wrap_future(self._submit(self._with_client(call)))

    def run_sync(self, call: Callable[[AsyncDiffusionGemma], Awaitable[T]]) -> T:
        """`call(client)` on the client's loop, waited for from a plain thread; Ctrl-C cancels it."""
        future = self._submit(self._with_client(call))
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    async def events(self, open_stream: StreamOpener) -> AsyncIterator[StreamEvent]:
        """The events of the stream `open_stream(client)` opens, for a coroutine on another loop."""
        stream = await self.run(_opener(open_stream))
        try:
            while (event := await asyncio.wrap_future(self._submit(_next_event(stream)))) is not None:
                yield event
        finally:
            self._submit(stream.aclose())  # not awaited: a cancelled caller must not wait for it

    def events_sync(self, open_stream: StreamOpener) -> Iterator[StreamEvent]:
        """The events of the stream `open_stream(client)` opens, for a plain thread."""
        stream = self.run_sync(_opener(open_stream))
        try:
            while (event := self._submit(_next_event(stream)).result()) is not None:
                yield event
        finally:
            self._submit(stream.aclose()).result(CLOSE_TIMEOUT)

    def close(self) -> None:
        """Close the client and stop the loop (also done when this object is collected)."""
        self._finalizer()

    async def _with_client(self, call: Callable[[AsyncDiffusionGemma], Awaitable[T]]) -> T:
        if self._state.client is None:
            self._state.client = self._make_client()  # on the loop's thread: a local engine loads here, once
        return await call(self._state.client)

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._state.started())


class _LoopState:
    """The loop, its thread and the client: what the finalizer needs, without a reference to the `ClientThread`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.client: AsyncDiffusionGemma | None = None
        self._lock = threading.Lock()

    def started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="diffusiongemma-client", daemon=True)
                self.thread.start()
        return self.loop

    def shut_down(self) -> None:
        with self._lock:
            if self.thread is None:
                self.loop.close()
                return
        on_the_loop = threading.current_thread() is self.thread  # collected there: nothing may wait for the loop
        if self.client is not None:
            closing = asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop)
            if not on_the_loop:
                closing.result(CLOSE_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not on_the_loop:
            self.thread.join(CLOSE_TIMEOUT)

    def _run(self) -> None:
        self.loop.run_forever()
        self.loop.close()


def _opener(open_stream: StreamOpener) -> Callable[[AsyncDiffusionGemma], Awaitable[GenerationStream]]:
    async def opened(client: AsyncDiffusionGemma) -> GenerationStream:
        return open_stream(client)

    return opened


async def _next_event(stream: GenerationStream) -> StreamEvent | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
