"""`DiffusionGemma`: a blocking twin of `AsyncDiffusionGemma` for scripts and notebooks.

Its event loop runs in a worker thread, so it also works where a loop already runs (Jupyter). Ctrl-C while it
waits cancels the generation.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from diffusiongemma_sdk._backend import Backend, Capabilities, ModelInfo
from diffusiongemma_sdk._client import AsyncDiffusionGemma, GenerationStream
from diffusiongemma_sdk._messages import PromptInput
from diffusiongemma_sdk._types import Generation, StreamEvent

__all__ = ["DiffusionGemma", "SyncGenerationStream"]

T = TypeVar("T")


class _Loop:
    """A private event loop in a worker thread; calls into it can be interrupted with Ctrl-C."""

    def __init__(self) -> None:
        self._context: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self._portal = self._context.__enter__()

    def run(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        future: Future[T] = self._portal.start_task_soon(function, *args)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def close(self) -> None:
        self._context.__exit__(None, None, None)


class DiffusionGemma:
    """Blocking client with the same methods and arguments as `AsyncDiffusionGemma`."""

    def __init__(self, backend: str | Backend | None = None, **options: Any) -> None:
        self._loop = _Loop()
        try:
            self._client = AsyncDiffusionGemma(backend, **options)
        except BaseException:
            self._loop.close()
            raise

    @property
    def backend(self) -> Backend:
        """The backend this client talks to."""
        return self._client.backend

    @property
    def capabilities(self) -> Capabilities:
        """What the backend supports."""
        return self._client.capabilities

    def __repr__(self) -> str:
        return f"DiffusionGemma(backend={self._client.backend.name!r})"

    def generate(self, prompt: PromptInput, **options: Any) -> Generation:
        """Generate one answer; see `AsyncDiffusionGemma.generate`."""
        return self._loop.run(partial(self._client.generate, prompt, **options))

    def stream(self, prompt: PromptInput, **options: Any) -> SyncGenerationStream:
        """Generate with events; use as `with client.stream(...) as s: for event in s`."""
        return SyncGenerationStream(self._client.stream(prompt, **options), self._loop)

    def generate_batch(self, prompts: Sequence[PromptInput], **options: Any) -> list[Generation]:
        """Generate for many prompts concurrently; see `AsyncDiffusionGemma.generate_batch`."""
        results: list[Generation] = self._loop.run(partial(self._client.generate_batch, prompts, **options))
        return results

    def models(self) -> list[ModelInfo]:
        """The models the backend serves."""
        return self._loop.run(self._client.models)

    def close(self) -> None:
        """Release the backend and stop the worker thread."""
        try:
            self._loop.run(self._client.aclose)
        finally:
            self._loop.close()

    def __enter__(self) -> DiffusionGemma:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SyncGenerationStream:
    """Blocking view of a `GenerationStream`."""

    def __init__(self, stream: GenerationStream, loop: _Loop) -> None:
        self._stream = stream
        self._loop = loop

    def __enter__(self) -> SyncGenerationStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[StreamEvent]:
        while True:
            try:
                yield self._loop.run(self._stream.__anext__)
            except StopAsyncIteration:
                return

    @property
    def text_stream(self) -> Iterator[str]:
        """The answer's text as it is committed."""
        for event in self:
            if event.type == "canvas":
                yield event.text_delta

    def final(self) -> Generation:
        """Wait for the end and return the whole generation."""
        for _ in self:
            pass
        return self._loop.run(self._stream.final)

    def partial(self) -> Generation:
        """What has arrived so far."""
        return self._stream.partial()

    def close(self) -> None:
        """Stop the generation and release what it holds."""
        self._loop.run(self._stream.aclose)
