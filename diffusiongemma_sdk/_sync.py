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
from typing_extensions import Unpack

from diffusiongemma_sdk._backend import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    Backend,
    Capabilities,
    GenerationRequest,
    ModelInfo,
)
from diffusiongemma_sdk._client import (
    AsyncDiffusionGemma,
    GenerateOptions,
    GenerationStream,
    RequestOptions,
    ToolInput,
)
from diffusiongemma_sdk._messages import PromptInput
from diffusiongemma_sdk._policy import UnsupportedPolicy
from diffusiongemma_sdk._structured import ResponseModel
from diffusiongemma_sdk._types import DiffusionParams, Generation, StreamEvent

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

    def __init__(
        self,
        backend: str | Backend | None = None,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        unsupported: UnsupportedPolicy = "error",
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self._loop = _Loop()
        try:
            self._client = AsyncDiffusionGemma(
                backend,
                api_key=api_key,
                timeout=timeout,
                max_retries=max_retries,
                unsupported=unsupported,
                backend_options=backend_options,
            )
        except BaseException:
            self._loop.close()
            raise

    @property
    def backend(self) -> Backend:
        """The backend this client talks to."""
        return self._client.backend

    @property
    def capabilities(self) -> Capabilities:
        """What the backend supports, as far as it is known yet (see `discover_capabilities`)."""
        return self._client.capabilities

    def discover_capabilities(self) -> Capabilities:
        """What the backend supports, asking it first where that takes I/O."""
        return self._loop.run(self._client.discover_capabilities)

    def __repr__(self) -> str:
        return f"DiffusionGemma(backend={self._client.backend.name!r})"

    def generate(
        self,
        prompt: PromptInput,
        *,
        max_tokens: int | None = None,
        thinking: bool | None = None,
        tools: Sequence[ToolInput] | None = None,
        tool_choice: str | None = None,
        diffusion: DiffusionParams | dict[str, Any] | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        response_model: ResponseModel | None = None,
        max_validation_retries: int = 2,
    ) -> Generation:
        """Generate one answer; see `AsyncDiffusionGemma.generate`."""
        request = self._client.build_request(
            prompt,
            max_tokens=max_tokens,
            thinking=thinking,
            tools=tools,
            tool_choice=tool_choice,
            diffusion=diffusion,
            seed=seed,
            stop=stop,
            timeout=timeout,
            max_retries=max_retries,
        )
        return self.send(request, response_model=response_model, max_validation_retries=max_validation_retries)

    def stream(
        self,
        prompt: PromptInput,
        *,
        max_tokens: int | None = None,
        thinking: bool | None = None,
        tools: Sequence[ToolInput] | None = None,
        tool_choice: str | None = None,
        diffusion: DiffusionParams | dict[str, Any] | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        drafts: bool = False,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> SyncGenerationStream:
        """Generate with events; use as `with client.stream(...) as s: for event in s`. See
        `AsyncDiffusionGemma.stream`."""
        request = self._client.build_request(
            prompt,
            max_tokens=max_tokens,
            thinking=thinking,
            tools=tools,
            tool_choice=tool_choice,
            diffusion=diffusion,
            seed=seed,
            stop=stop,
            drafts=drafts,
            timeout=timeout,
            max_retries=max_retries,
        )
        return self.send_stream(request)

    def build_request(self, prompt: PromptInput, **options: Unpack[RequestOptions]) -> GenerationRequest:
        """The `GenerationRequest` these arguments make; see `AsyncDiffusionGemma.build_request`."""
        return self._client.build_request(prompt, **options)

    def send(
        self,
        request: GenerationRequest,
        *,
        response_model: ResponseModel | None = None,
        max_validation_retries: int = 2,
    ) -> Generation:
        """Run a built request to completion; see `AsyncDiffusionGemma.send`."""
        send = partial(self._client.send, response_model=response_model, max_validation_retries=max_validation_retries)
        return self._loop.run(send, request)

    def send_stream(self, request: GenerationRequest) -> SyncGenerationStream:
        """Stream a built request; see `AsyncDiffusionGemma.send_stream`."""
        return SyncGenerationStream(self._client.send_stream(request), self._loop)

    def generate_batch(
        self, prompts: Sequence[PromptInput], *, concurrency: int = 8, **options: Unpack[GenerateOptions]
    ) -> list[Generation]:
        """Generate for many prompts concurrently; see `AsyncDiffusionGemma.generate_batch`."""
        batch = partial(self._client.generate_batch, concurrency=concurrency, **options)
        results: list[Generation] = self._loop.run(batch, prompts)
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
