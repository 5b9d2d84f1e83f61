"""`AsyncDiffusionGemma`: the one client application code uses, whatever the backend.

Every request, from every entry point (this client, the blocking twin, the CLI, `serve`, the LangChain
integration), is built into a `GenerationRequest` and goes through `send` or `send_stream`: the one place that
learns what the backend supports, applies the unsupported-parameter policy, retries transient failures and enforces
the deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal, TypedDict, overload

import anyio
from pydantic import BaseModel, SecretStr, ValidationError
from typing_extensions import Unpack

from diffusiongemma_sdk._accumulator import GenerationAccumulator
from diffusiongemma_sdk._backend import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    Backend,
    BackendOptions,
    Capabilities,
    GenerationRequest,
    ModelInfo,
)
from diffusiongemma_sdk._errors import (
    APIError,
    APITimeoutError,
    GenerationCancelled,
    InvalidRequestError,
    describe_validation_error,
)
from diffusiongemma_sdk._messages import PromptInput, normalize_messages
from diffusiongemma_sdk._policy import UnsupportedPolicy, apply_policy
from diffusiongemma_sdk._retry import retrying
from diffusiongemma_sdk._spec import create_backend
from diffusiongemma_sdk._structured import ResponseModel, generate_structured, structured_request
from diffusiongemma_sdk._tools import Tool, as_tool
from diffusiongemma_sdk._types import CanvasEvent, DiffusionParams, DoneEvent, Generation, StreamEvent

__all__ = ["AsyncDiffusionGemma", "GenerateOptions", "GenerationStream", "RequestOptions", "ToolInput"]

ToolInput = Tool | Callable[..., Any] | type[BaseModel]


class _RequestFields(TypedDict, total=False):
    max_tokens: int | None
    thinking: bool | None
    tools: Sequence[ToolInput] | None
    tool_choice: str | None
    diffusion: DiffusionParams | dict[str, Any] | None
    seed: int | None
    stop: str | Sequence[str] | None
    timeout: float | None
    max_retries: int | None


class RequestOptions(_RequestFields, total=False):
    """The keyword arguments of `build_request()`."""

    drafts: bool


class GenerateOptions(_RequestFields, total=False):
    """The keyword arguments of `generate()`, as `generate_batch()` takes them for every prompt."""

    response_model: ResponseModel | None
    max_validation_retries: int


class AsyncDiffusionGemma:
    """Generate with DiffusionGemma on any backend.

    `backend` is a spec string (`"nim"`, `"openai:http://host:8000/v1#model"`, `"torch:demo"`, `"gguf:model.gguf"`,
    `"test"`), a `Backend` instance, or None to read `DIFFUSIONGEMMA_BACKEND` (else `nim` when `NVIDIA_API_KEY` is
    set). `timeout` is each call's deadline in seconds and `max_retries` how often a transient failure is retried,
    both overridable per call. `unsupported` says what happens to a feature the backend lacks: "error" raises
    `UnsupportedParameterError`, "warn" warns and drops it, "drop" drops it quietly.
    """

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
        if unsupported not in ("error", "warn", "drop"):
            raise InvalidRequestError(f"unsupported must be 'error', 'warn' or 'drop', not {unsupported!r}")
        try:
            options = BackendOptions(
                api_key=SecretStr(api_key) if api_key else None,
                timeout=timeout,
                max_retries=max_retries,
                extra=backend_options or {},
            )
        except ValidationError as exc:
            raise InvalidRequestError(f"Invalid client option: {describe_validation_error(exc)}") from None
        self.unsupported: UnsupportedPolicy = unsupported
        self.timeout = options.timeout
        self.max_retries = options.max_retries
        self._backend = backend if isinstance(backend, Backend) else create_backend(backend, options)

    @property
    def backend(self) -> Backend:
        """The backend this client talks to."""
        return self._backend

    @property
    def capabilities(self) -> Capabilities:
        """What the backend supports, as far as it is known yet (see `discover_capabilities`)."""
        return self._backend.capabilities

    async def discover_capabilities(self) -> Capabilities:
        """What the backend supports, asking it first where that takes I/O (an `openai:` server, once)."""
        if self._backend.capabilities_known:
            return self._backend.capabilities
        return await self._backend.discover_capabilities()

    def __repr__(self) -> str:
        return f"AsyncDiffusionGemma(backend={self._backend.name!r})"

    def build_request(
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
    ) -> GenerationRequest:
        """The `GenerationRequest` these arguments make (see `generate`), checked for shape; `send` runs it."""
        try:
            return GenerationRequest(
                messages=normalize_messages(prompt),
                max_tokens=max_tokens,
                thinking=thinking,
                tools=[as_tool(tool) for tool in tools or []],
                tool_choice=tool_choice,
                diffusion=DiffusionParams.model_validate(diffusion) if diffusion is not None else None,
                seed=seed,
                stop=[stop] if isinstance(stop, str) else list(stop or []),
                drafts=drafts,
                timeout=timeout,
                max_retries=max_retries,
            )
        except ValidationError as exc:
            raise InvalidRequestError(f"Invalid request: {describe_validation_error(exc)}") from None

    async def generate(
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
        """Generate one answer.

        `prompt` is a string, a `Message`, an OpenAI-style dict, or a list of them (tool results as `tool` messages
        with `tool_call_id`). `tools` are `Tool` objects, typed functions or pydantic models; `tool_choice` is
        "auto", "none" (never a call), "required" (always a call) or a tool's name (always a call of it).
        `diffusion` tunes the sampler where the backend allows it. With `response_model` (a pydantic model class or
        a JSON schema dict), the answer is validated into it (`Generation.parsed`: the instance, or the JSON value),
        re-asking up to `max_validation_retries` times before raising `OutputValidationError`. `timeout` bounds the
        whole call, re-asks included (`APITimeoutError`).
        """
        request = self.build_request(
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
        return await self.send(request, response_model=response_model, max_validation_retries=max_validation_retries)

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
    ) -> GenerationStream:
        """Generate with events as they happen: `async with client.stream(...) as s: async for event in s`.

        The stream carries committed canvases, reasoning, tool calls, usage and the final generation; with
        `drafts=True` also a `denoise_step` event per denoising step (backends that denoise locally, or a `serve`
        in front of one). Malformed arguments raise here, and so does a feature the backend lacks, except on a
        backend that has yet to learn what it supports (an `openai:` server is asked once): then it raises at the
        first event.
        """
        request = self.build_request(
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

    async def send(
        self,
        request: GenerationRequest,
        *,
        response_model: ResponseModel | None = None,
        max_validation_retries: int = 2,
    ) -> Generation:
        """Run a built request to completion: capabilities, policy, retries and the deadline, as `generate` does."""
        if response_model is not None and request.tools:
            raise InvalidRequestError("response_model cannot be combined with tools; pass one or the other.")
        if max_validation_retries < 0:
            raise InvalidRequestError("max_validation_retries must be 0 or more")
        timeout = request.timeout or self.timeout
        with self._deadline(timeout):
            capabilities = await self.discover_capabilities()
            if response_model is None:
                return await self._attempts(self._check(request, capabilities))
            native = capabilities.native_structured_output
            checked = self._check(structured_request(request, response_model, native=native), capabilities)
            return await generate_structured(self._attempts, checked, response_model, max_validation_retries)

    def send_stream(self, request: GenerationRequest) -> GenerationStream:
        """Stream a built request, as `stream` does."""
        timeout = request.timeout or self.timeout
        if self._backend.capabilities_known:
            checked = self._check(request, self._backend.capabilities)
            return GenerationStream(lambda: self._events(checked), timeout=timeout, backend=self._backend.name)
        return GenerationStream(lambda: self._events(request, check=True), timeout=timeout, backend=self._backend.name)

    @overload
    async def generate_batch(
        self,
        prompts: Sequence[PromptInput],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        **options: Unpack[GenerateOptions],
    ) -> list[Generation]: ...

    @overload
    async def generate_batch(
        self,
        prompts: Sequence[PromptInput],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[True],
        **options: Unpack[GenerateOptions],
    ) -> list[Generation | Exception]: ...

    async def generate_batch(
        self,
        prompts: Sequence[PromptInput],
        *,
        concurrency: int = 8,
        return_exceptions: bool = False,
        **options: Unpack[GenerateOptions],
    ) -> list[Generation] | list[Generation | Exception]:
        """Generate for many prompts, at most `concurrency` at once; results keep the prompts' order.

        The first failure cancels the rest and is raised, unless `return_exceptions=True` puts each error in its
        prompt's place. `options` are `generate()`'s keyword arguments, applied to every prompt.
        """
        if concurrency < 1:
            raise InvalidRequestError(f"concurrency must be at least 1, not {concurrency}")
        results: list[Generation | Exception | None] = [None] * len(prompts)
        failures: list[Exception] = []
        limiter = anyio.CapacityLimiter(concurrency)

        async def run(index: int, prompt: PromptInput, scope: anyio.CancelScope) -> None:
            async with limiter:
                try:
                    results[index] = await self.generate(prompt, **options)
                except Exception as exc:
                    results[index] = exc
                    if not return_exceptions:
                        failures.append(exc)
                        scope.cancel()

        async with anyio.create_task_group() as group:
            for index, prompt in enumerate(prompts):
                group.start_soon(run, index, prompt, group.cancel_scope)
        if failures:
            raise failures[0]
        return [result for result in results if result is not None]

    async def models(self) -> list[ModelInfo]:
        """The models the backend serves."""
        return await self._backend.models()

    async def aclose(self) -> None:
        """Release the backend's connections and memory."""
        await self._backend.aclose()

    async def __aenter__(self) -> AsyncDiffusionGemma:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _check(self, request: GenerationRequest, capabilities: Capabilities) -> GenerationRequest:
        """The request as the backend receives it: the policy applied, the client's defaults filled in."""
        checked = apply_policy(request, capabilities, backend=self._backend.name, policy=self.unsupported)
        return checked.model_copy(
            update={
                "timeout": request.timeout or self.timeout,
                "max_retries": self.max_retries if request.max_retries is None else request.max_retries,
            }
        )

    async def _attempts(self, request: GenerationRequest) -> Generation:
        return await retrying(lambda: self._backend.generate(request), _retries(request))

    async def _events(self, request: GenerationRequest, *, check: bool = False) -> AsyncIterator[StreamEvent]:
        """The backend's events for a request; a transient failure before the first event is retried."""
        if check:
            request = self._check(request, await self._backend.discover_capabilities())

        async def first_event() -> tuple[StreamEvent, AsyncIterator[StreamEvent]]:
            events = self._backend.stream(request)
            try:
                return await events.__anext__(), events
            except BaseException:
                await _close(events)
                raise

        first, events = await retrying(first_event, _retries(request))
        try:
            yield first
            async for event in events:
                yield event
        finally:
            await _close(events)

    @contextmanager
    def _deadline(self, timeout: float) -> Iterator[None]:
        try:
            with anyio.fail_after(timeout):
                yield
        except TimeoutError:
            raise APITimeoutError(_timeout_message(self._backend.name, timeout)) from None


class GenerationStream:
    """A generation in progress: iterate its events, or its text, or wait for the final `Generation`.

    Use it as `async with client.stream(...) as s:`; leaving the block early stops the backend's work. The
    stream's deadline (`timeout`) counts from its first event's request; when it passes, the backend's work stops
    and `APITimeoutError` is raised with what had arrived as its `partial`.
    """

    def __init__(
        self, open_events: Callable[[], AsyncIterator[StreamEvent]], *, timeout: float, backend: str = ""
    ) -> None:
        self._open_events = open_events
        self._timeout = timeout
        self._backend = backend
        self._events: AsyncIterator[StreamEvent] | None = None
        self._deadline = 0.0
        self._final: Generation | None = None
        self._accumulator = GenerationAccumulator(backend)

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._events is None:
            self._events = self._open_events()
            self._deadline = anyio.current_time() + self._timeout
        try:
            with anyio.fail_after(self._deadline - anyio.current_time()):
                event = await self._events.__anext__()
        except TimeoutError:
            await self.aclose()
            raise APITimeoutError(_timeout_message(self._backend, self._timeout), partial=self.partial()) from None
        except APIError as exc:
            exc.partial = exc.partial or self.partial()
            raise
        self._accumulator.add(event)
        if isinstance(event, DoneEvent):
            self._final = event.generation
        return event

    @property
    def text_stream(self) -> AsyncIterator[str]:
        """The answer's text as it is committed."""
        return self._text_deltas()

    async def _text_deltas(self) -> AsyncIterator[str]:
        async for event in self:
            if isinstance(event, CanvasEvent):
                yield event.text_delta

    async def final(self) -> Generation:
        """Wait for the end and return the whole generation.

        Raises `GenerationCancelled` (with the partial generation) if the stream was closed before it finished.
        """
        async for _ in self:
            pass
        if self._final is None:
            raise GenerationCancelled("The stream was closed before the generation finished.", partial=self.partial())
        return self._final

    def partial(self) -> Generation:
        """What has arrived so far, as a generation marked `cancelled` until the stream is done."""
        return self._final if self._final is not None else self._accumulator.partial()

    async def aclose(self) -> None:
        """Stop the generation and release what it holds."""
        events, self._events = self._events, _closed()
        if events is not None:
            await _close(events)


def _retries(request: GenerationRequest) -> int:
    return request.max_retries or 0


def _timeout_message(backend: str, timeout: float) -> str:
    return f"{backend} gave no complete answer within {timeout:g} s, the deadline of the call (timeout=...)."


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    aclose: Callable[[], Awaitable[None]] | None = getattr(events, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):  # a passed deadline must not stop the backend from cleaning up
            await aclose()


async def _closed() -> AsyncIterator[StreamEvent]:
    return
    yield  # an empty async generator, standing in for a closed stream
