"""`AsyncDiffusionGemma`: the one client application code uses, whatever the backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Literal, overload

import anyio
from pydantic import BaseModel, SecretStr, ValidationError

from diffusiongemma_sdk._backend import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    Backend,
    BackendOptions,
    Capabilities,
    GenerationRequest,
    ModelInfo,
)
from diffusiongemma_sdk._errors import GenerationCancelled, InvalidRequestError, describe_validation_error
from diffusiongemma_sdk._messages import PromptInput, normalize_messages
from diffusiongemma_sdk._policy import UnsupportedPolicy, apply_policy
from diffusiongemma_sdk._spec import create_backend
from diffusiongemma_sdk._structured import generate_structured
from diffusiongemma_sdk._tools import Tool, as_tool
from diffusiongemma_sdk._types import (
    CanvasEvent,
    DiffusionParams,
    DoneEvent,
    Generation,
    ReasoningEvent,
    StreamEvent,
    ToolCall,
    ToolCallEvent,
)

__all__ = ["AsyncDiffusionGemma", "GenerationStream", "ToolInput"]

ToolInput = Tool | Callable[..., Any] | type[BaseModel]


class AsyncDiffusionGemma:
    """Generate with DiffusionGemma on any backend.

    `backend` is a spec string (`"nim"`, `"openai:http://host:8000/v1#model"`, `"torch:demo"`, `"gguf:model.gguf"`),
    a `Backend` instance, or None to read `DIFFUSIONGEMMA_BACKEND` (else `nim` when `NVIDIA_API_KEY` is set).
    `unsupported` says what happens to a feature the backend lacks: "error" raises `UnsupportedParameterError`,
    "warn" warns and drops it, "drop" drops it quietly.
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
        self.unsupported: UnsupportedPolicy = unsupported
        if isinstance(backend, Backend):
            self._backend = backend
        else:
            try:
                options = BackendOptions(
                    api_key=SecretStr(api_key) if api_key else None,
                    timeout=timeout,
                    max_retries=max_retries,
                    extra=backend_options or {},
                )
            except ValidationError as exc:
                raise InvalidRequestError(f"Invalid client option: {describe_validation_error(exc)}") from None
            self._backend = create_backend(backend, options)

    @property
    def backend(self) -> Backend:
        """The backend this client talks to."""
        return self._backend

    @property
    def capabilities(self) -> Capabilities:
        """What the backend supports."""
        return self._backend.capabilities

    def __repr__(self) -> str:
        return f"AsyncDiffusionGemma(backend={self._backend.name!r})"

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
        response_model: type[BaseModel] | None = None,
        max_validation_retries: int = 2,
    ) -> Generation:
        """Generate one answer.

        `prompt` is a string, a `Message`, an OpenAI-style dict, or a list of them (tool results as `tool` messages
        with `tool_call_id`). `tools` are `Tool` objects, typed functions or pydantic models; `tool_choice` is
        "auto", "none", "required" or a tool's name. `diffusion` tunes the sampler where the backend allows it.
        With `response_model`, the answer is validated into that pydantic model (`Generation.parsed`), re-asking up
        to `max_validation_retries` times before raising `OutputValidationError`.
        """
        request = await self._checked(
            self._build(prompt, max_tokens, thinking, tools, tool_choice, diffusion, seed, stop, timeout, max_retries)
        )
        if response_model is None:
            return await self._backend.generate(request)
        if request.tools:
            raise InvalidRequestError("response_model cannot be combined with tools; pass one or the other.")
        if max_validation_retries < 0:
            raise InvalidRequestError("max_validation_retries must be 0 or more")
        return await generate_structured(
            self._backend.generate,
            request,
            response_model,
            native=self.capabilities.native_structured_output,
            max_validation_retries=max_validation_retries,
        )

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
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> GenerationStream:
        """Generate with events as they happen: `async with client.stream(...) as s: async for event in s`.

        Malformed arguments raise here. A feature the backend lacks raises here too, except on a backend that has
        yet to learn what it supports (an `openai:` server is asked once): then it raises at the first event.
        """
        request = self._build(
            prompt, max_tokens, thinking, tools, tool_choice, diffusion, seed, stop, timeout, max_retries
        )
        if self._backend.capabilities_known:
            checked = self._check(request, self.capabilities)
            return GenerationStream(lambda: self._backend.stream(checked))
        return GenerationStream(lambda: self._stream_checked(request))

    async def _stream_checked(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        events = self._backend.stream(await self._checked(request))
        try:
            async for event in events:
                yield event
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    @overload
    async def generate_batch(
        self,
        prompts: Sequence[PromptInput],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        **options: Any,
    ) -> list[Generation]: ...

    @overload
    async def generate_batch(
        self,
        prompts: Sequence[PromptInput],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[True],
        **options: Any,
    ) -> list[Generation | Exception]: ...

    async def generate_batch(
        self,
        prompts: Sequence[PromptInput],
        *,
        concurrency: int = 8,
        return_exceptions: bool = False,
        **options: Any,
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

    async def _checked(self, request: GenerationRequest) -> GenerationRequest:
        """The request after the unsupported-parameter policy, once the backend knows what it supports."""
        if self._backend.capabilities_known:
            return self._check(request, self.capabilities)
        return self._check(request, await self._backend.discover_capabilities())

    def _check(self, request: GenerationRequest, capabilities: Capabilities) -> GenerationRequest:
        return apply_policy(request, capabilities, backend=self._backend.name, policy=self.unsupported)

    def _build(
        self,
        prompt: PromptInput,
        max_tokens: int | None,
        thinking: bool | None,
        tools: Sequence[ToolInput] | None,
        tool_choice: str | None,
        diffusion: DiffusionParams | dict[str, Any] | None,
        seed: int | None,
        stop: str | Sequence[str] | None,
        timeout: float | None,
        max_retries: int | None,
    ) -> GenerationRequest:
        tool_list = [as_tool(tool) for tool in tools or []]
        if tool_choice not in (None, "auto", "none", "required") and tool_choice not in {t.name for t in tool_list}:
            raise InvalidRequestError(
                f"tool_choice {tool_choice!r} is not 'auto', 'none', 'required' or the name of a tool passed in tools="
            )
        try:
            request = GenerationRequest(
                messages=normalize_messages(prompt),
                max_tokens=max_tokens,
                thinking=thinking,
                tools=tool_list,
                tool_choice=tool_choice,
                diffusion=DiffusionParams.model_validate(diffusion) if diffusion is not None else None,
                seed=seed,
                stop=[stop] if isinstance(stop, str) else list(stop or []),
                timeout=timeout,
                max_retries=max_retries,
            )
        except ValidationError as exc:
            raise InvalidRequestError(f"Invalid request: {describe_validation_error(exc)}") from None
        return request


class GenerationStream:
    """A generation in progress: iterate its events, or its text, or wait for the final `Generation`.

    Use it as `async with client.stream(...) as s:`; leaving the block early stops the backend's work.
    """

    def __init__(self, open_events: Callable[[], AsyncIterator[StreamEvent]]) -> None:
        self._open_events = open_events
        self._events: AsyncIterator[StreamEvent] | None = None
        self._final: Generation | None = None
        self._text: list[str] = []
        self._reasoning: list[str] | None = None
        self._tool_calls: list[ToolCall] = []

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
        event = await self._events.__anext__()
        self._record(event)
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
        if self._final is not None:
            return self._final
        return Generation(
            text="".join(self._text),
            reasoning=None if self._reasoning is None else "".join(self._reasoning),
            tool_calls=list(self._tool_calls),
            finish_reason="cancelled",
        )

    async def aclose(self) -> None:
        """Stop the generation and release what it holds."""
        events, self._events = self._events, _closed()
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()

    def _record(self, event: StreamEvent) -> None:
        if isinstance(event, CanvasEvent):
            self._text.append(event.text_delta)
        elif isinstance(event, ReasoningEvent):
            self._reasoning = self._reasoning or []
            self._reasoning.append(event.text_delta)
        elif isinstance(event, ToolCallEvent):
            self._tool_calls.append(event.tool_call)
        elif isinstance(event, DoneEvent):
            self._final = event.generation


async def _closed() -> AsyncIterator[StreamEvent]:
    return
    yield  # an empty async generator, standing in for a closed stream
