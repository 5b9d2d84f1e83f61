"""`ChatDiffusionGemma`: LangChain's chat model for DiffusionGemma on any diffusiongemma-sdk backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput, ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, message_chunk_to_message
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils import from_env
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from diffusiongemma_sdk import (
    AsyncDiffusionGemma,
    CanvasEvent,
    DenoiseStepEvent,
    DiffusionParams,
    DoneEvent,
    Generation,
    GenerationRequest,
    GenerationStream,
    OutputValidationError,
    ReasoningEvent,
    StreamEvent,
    Tool,
    ToolCallEvent,
    UnsupportedParameterError,
)
from diffusiongemma_sdk._policy import UnsupportedPolicy, refuse
from langchain_diffusiongemma._client_thread import ClientThread, shared_client_thread
from langchain_diffusiongemma._convert import (
    MODEL_PROVIDER,
    ai_message,
    final_chunk,
    reasoning_chunk,
    sdk_messages,
    tool_call_chunk_message,
)
from langchain_diffusiongemma._drafts import DraftSink
from langchain_diffusiongemma._effort import Effort, diffusion_for
from langchain_diffusiongemma._profile import declared_capabilities, profile_from
from langchain_diffusiongemma._structured import structured_output
from langchain_diffusiongemma._tools import (
    ToolChoiceInput,
    openai_tools,
    sdk_tool_choice,
    sdk_tools,
    with_strict_arguments,
)

__all__ = ["ChatDiffusionGemma"]

TEMPERATURE_WHY = (
    "the sampler anneals its own temperature over the denoising steps; set diffusion=DiffusionParams(t_max=..., "
    "t_min=...) or effort= instead"
)
_CALL_OPTIONS = {
    "max_tokens",
    "thinking",
    "diffusion",
    "effort",
    "seed",
    "timeout",
    "max_retries",
    "temperature",
    "drafts",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "strict",
    "response_format",
    "max_validation_retries",
    "model",
}


class ChatDiffusionGemma(BaseChatModel):
    """DiffusionGemma as a LangChain chat model, on any diffusiongemma-sdk backend.

    `ChatDiffusionGemma("torch:demo")`, `ChatDiffusionGemma("nim")`, `ChatDiffusionGemma("openai:http://host/v1")`,
    `ChatDiffusionGemma(client)` with an existing `AsyncDiffusionGemma`, or no backend to read
    `DIFFUSIONGEMMA_BACKEND`. Nothing is loaded or asked before the first call; every call of every chat model with
    the same settings then shares one client on an event loop of its own, so concurrent calls (`abatch`,
    `RunnableParallel`, LangGraph's `Send`) reach a local engine together and are batched
    (`backend_options={"max_batch": N}`).

    `effort` ("instant", "low", "medium", "high") picks diffusion settings; `diffusion` sets them field by field.
    `drafts=True` dispatches each denoising step's draft as the custom event `diffusiongemma.denoise_step` (and into
    LangGraph's custom stream). `temperature`, which the diffusion sampler has no use for, goes through the
    `unsupported` policy ("error" by default: set it to "warn" or "drop" to accept code written for other models).
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    backend: str | None = Field(default_factory=from_env("DIFFUSIONGEMMA_BACKEND", default=None), alias="model")
    """The backend spec (`nim`, `openai:<url>[#model]`, `torch:<dir|demo>`, `gguf:<file>`, `test`)."""
    client: AsyncDiffusionGemma | None = Field(default=None, exclude=True)
    """An existing client to use instead of `backend` (it then runs on this model's own event loop)."""
    api_key: SecretStr | None = None
    """The key of a remote backend; None reads the backend's variable (`NVIDIA_API_KEY`, `DIFFUSIONGEMMA_API_KEY`)."""
    backend_options: dict[str, Any] = Field(default_factory=dict)
    unsupported: UnsupportedPolicy = "error"
    max_tokens: int | None = None
    thinking: bool | None = None
    diffusion: DiffusionParams | None = None
    effort: Effort | None = None
    seed: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = None
    max_retries: int | None = None
    temperature: float | None = None
    drafts: bool = False
    streaming: bool = False
    max_validation_retries: int = 2

    _client_thread: ClientThread | None = PrivateAttr(default=None)
    _derived_profile: bool = PrivateAttr(default=False)

    def __init__(self, backend: str | AsyncDiffusionGemma | None = None, /, **fields: Any) -> None:
        if isinstance(backend, AsyncDiffusionGemma):
            fields["client"] = backend
        elif backend is not None:
            fields["backend"] = backend
        super().__init__(**fields)

    @model_validator(mode="after")
    def _check_source(self) -> ChatDiffusionGemma:
        if self.client is not None and self.backend is not None and self.backend != self.client.backend.name:
            raise ValueError("pass a backend spec or a client, not both")
        return self

    # --- what LangChain reads --------------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "diffusiongemma"

    @property
    def model_name(self) -> str:
        """The backend's spec string (what traces call the model)."""
        if self.client is not None:
            return self.client.backend.name
        return self.backend or "diffusiongemma"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "backend": self.model_name,
            "max_tokens": self.max_tokens,
            "thinking": self.thinking,
            "effort": self.effort,
            "diffusion": None if self.diffusion is None else self.diffusion.model_dump(exclude_none=True),
            "seed": self.seed,
            "stop": self.stop,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=MODEL_PROVIDER,
            ls_model_name=str(kwargs.get("model") or self.model_name),
            ls_model_type="chat",
        )
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if (temperature := kwargs.get("temperature", self.temperature)) is not None:
            params["ls_temperature"] = temperature
        if stop := stop or kwargs.get("stop") or self.stop:
            params["ls_stop"] = list(stop)
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        capabilities = self.client.capabilities if self.client is not None else declared_capabilities(self.backend)
        self._derived_profile = capabilities is not None
        return None if capabilities is None else profile_from(capabilities)

    # Drafts are custom events of this model's own run, and only `_generate` / `_agenerate` get the run's callbacks:
    # with drafts on they stream internally, handing each chunk (astream_events, LangGraph's "messages" mode) and each
    # draft to the callbacks, and `stream()` yields the whole answer at the end.

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        wanted = super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)
        return wanted and not kwargs.get("drafts", self.drafts)

    def _should_use_protocol_streaming(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        wanted = super()._should_use_protocol_streaming(async_api=async_api, run_manager=run_manager, **kwargs)
        return wanted and not kwargs.get("drafts", self.drafts)

    # --- tools and structured output -------------------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: ToolChoiceInput = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, functions, pydantic models, OpenAI dicts). `tool_choice`: a tool's name,
        "auto", "none", "any"/"required"/True, or OpenAI's dict. `parallel_tool_calls=False` keeps the first call;
        `strict=True` turns calls whose arguments break their schema into `invalid_tool_calls`. Other keyword
        arguments (`effort`, `seed`, ...) are bound too."""
        declarations = openai_tools(tools)
        names = [declaration["function"]["name"] for declaration in declarations]
        bound: dict[str, Any] = {"tools": declarations, **kwargs}
        if (choice := sdk_tool_choice(tool_choice, names)) is not None:
            bound["tool_choice"] = choice
        if parallel_tool_calls is not None:
            bound["parallel_tool_calls"] = parallel_tool_calls
        if strict is not None:
            bound["strict"] = strict
        return self.bind(**bound)

    def with_structured_output(
        self,
        schema: Any = None,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Answers parsed into `schema` (a pydantic model, a TypedDict, a JSON schema dict or an OpenAI tool).

        "json_schema" (default) and "json_mode" go through the SDK's structured output: native where the backend
        constrains its output, else the schema in the prompt, validated, re-asked with the error up to
        `max_validation_retries` times. "function_calling" forces a call of the schema as a tool. With
        `include_raw`, the result is `{"raw": AIMessage, "parsed": ..., "parsing_error": ...}`.
        """
        if kwargs:
            raise ValueError(f"Unexpected arguments: {', '.join(kwargs)}")
        return structured_output(self, schema, method=method, include_raw=include_raw, strict=strict)

    # --- the calls -------------------------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._call(messages, stop, kwargs)
        if call.drafts:
            return _result(_aggregate(self._stream(messages, stop, run_manager, **kwargs)))
        return call.result(self._thread().run_sync(call.send))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._call(messages, stop, kwargs)
        if call.drafts:
            return _result(_aggregate([chunk async for chunk in self._astream(messages, stop, run_manager, **kwargs)]))
        return call.result(await self._thread().run(call.send))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._call(messages, stop, kwargs)
        if call.response_format is not None:  # validated whole: one chunk
            yield _whole(call.result(self._thread().run_sync(call.send)))
            return
        sink = DraftSink() if call.drafts else None
        chunks = _Chunks(call)
        for event in self._thread().events_sync(call.open):
            if isinstance(event, DenoiseStepEvent) and sink is not None:
                sink.send(event, run_manager)
            for chunk in chunks.of(event):
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = self._call(messages, stop, kwargs)
        if call.response_format is not None:
            yield _whole(call.result(await self._thread().run(call.send)))
            return
        sink = DraftSink() if call.drafts else None
        chunks = _Chunks(call)
        async for event in self._thread().events(call.open):
            if isinstance(event, DenoiseStepEvent) and sink is not None:
                await sink.asend(event, run_manager)
            for chunk in chunks.of(event):
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def close(self) -> None:
        """Release the backend now (otherwise when no chat model uses it any more)."""
        if self._client_thread is not None:
            self._client_thread.close()

    # --- helpers ---------------------------------------------------------------------------------------------------

    def _thread(self) -> ClientThread:
        if self._client_thread is None:
            if self.client is not None:
                self._client_thread = shared_client_thread(("client", id(self.client)), lambda: self.client)  # type: ignore[arg-type, return-value]
            else:
                key = (self.backend, self.api_key, json.dumps(self.backend_options, sort_keys=True), self.unsupported)
                self._client_thread = shared_client_thread(key, self._new_client)
        return self._client_thread

    def _new_client(self) -> AsyncDiffusionGemma:
        client = AsyncDiffusionGemma(
            self.backend,
            api_key=None if self.api_key is None else self.api_key.get_secret_value(),
            unsupported=self.unsupported,
            backend_options=self.backend_options,
        )
        if self._derived_profile or self.profile is None:
            self.profile = profile_from(client.capabilities)
        return client

    def _call(self, messages: list[BaseMessage], stop: list[str] | None, options: dict[str, Any]) -> _Call:
        unknown = set(options) - _CALL_OPTIONS
        if unknown:
            raise TypeError(f"ChatDiffusionGemma got unexpected call options: {', '.join(sorted(unknown))}")
        model = options.get("model")
        if model is not None and model != self.model_name:
            raise ValueError(f"This chat model serves {self.model_name!r}; make another one for {model!r}.")
        setting = {name: options.get(name, getattr(self, name)) for name in ("max_tokens", "thinking", "seed")}
        if options.get("temperature", self.temperature) is not None:
            refuse("temperature", TEMPERATURE_WHY, backend=self.model_name, policy=self.unsupported)
        effort: Effort | None = options.get("effort", self.effort)
        diffusion = options.get("diffusion", self.diffusion)
        if isinstance(diffusion, Mapping):
            diffusion = DiffusionParams.model_validate(diffusion)
        tools = sdk_tools(options.get("tools") or [])
        fields = {
            **setting,
            "tools": tools,
            "tool_choice": options.get("tool_choice"),
            "diffusion": diffusion_for(effort, diffusion),
            "stop": [*(self.stop or []), *(stop or [])] or None,
            "timeout": options.get("timeout", self.timeout),
            "max_retries": options.get("max_retries", self.max_retries),
        }
        if self._derived_profile and (client := self._thread().client) is not None:
            self.profile = profile_from(client.capabilities)  # what the backend says now it is built (and asked)
        return _Call(
            prompt=sdk_messages(messages),
            fields=fields,
            drafts=bool(options.get("drafts", self.drafts)),
            effort=effort if diffusion is None else None,
            tools=tools,
            single_tool_call=options.get("parallel_tool_calls") is False,
            strict=bool(options.get("strict")),
            response_format=options.get("response_format"),
            max_validation_retries=options.get("max_validation_retries", self.max_validation_retries),
        )


@dataclass(frozen=True)
class _Call:
    """One call: the request's fields (built into a request by the client, on its loop) and how the answer is
    shaped."""

    prompt: list[dict[str, Any]]
    fields: dict[str, Any]
    drafts: bool
    effort: Effort | None
    tools: list[Tool]
    single_tool_call: bool
    strict: bool
    response_format: Any
    max_validation_retries: int

    def request(self, client: AsyncDiffusionGemma) -> GenerationRequest:
        return client.build_request(self.prompt, **self.fields, drafts=self.drafts)

    def open(self, client: AsyncDiffusionGemma) -> GenerationStream:
        return client.send_stream(self.request(client))

    async def send(self, client: AsyncDiffusionGemma) -> Generation:
        """The request through the client's checked path; an effort the backend cannot honour is named as such."""
        try:
            if self.response_format is None:
                return await client.send(self.request(client))
            return await client.send(
                self.request(client),
                response_model=self.response_format,
                max_validation_retries=self.max_validation_retries,
            )
        except UnsupportedParameterError as exc:
            if exc.parameter != "diffusion" or self.effort is None:
                raise
            raise UnsupportedParameterError(
                exc.backend, "effort", f"effort={self.effort!r} needs per-request diffusion settings, which it lacks"
            ) from None
        except OutputValidationError as exc:
            return Generation(text=exc.attempts[-1], extra={"parsing_error": str(exc)}, usage=exc.usage)

    def result(self, generation: Generation) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.message(generation))])

    def message(self, generation: Generation) -> AIMessage:
        errors: dict[str, str] = {}
        if self.strict:
            generation, errors = with_strict_arguments(generation, self.tools)
        message = ai_message(generation, single_tool_call=self.single_tool_call, errors=errors)
        if self.response_format is not None:
            if "parsing_error" in generation.extra:
                message.additional_kwargs["parsing_error"] = generation.extra["parsing_error"]
            else:
                message.additional_kwargs["parsed"] = generation.parsed
        return message


class _Chunks:
    """A stream's events as message chunks: text, reasoning, tool calls, then usage and metadata once."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._tool_calls = 0

    def of(self, event: StreamEvent) -> list[ChatGenerationChunk]:
        message: AIMessageChunk | None = None
        if isinstance(event, CanvasEvent) and event.text_delta:
            message = AIMessageChunk(content=event.text_delta)
        elif isinstance(event, ReasoningEvent) and event.text_delta:
            message = reasoning_chunk(event.text_delta)
        elif isinstance(event, ToolCallEvent) and not (self._call.single_tool_call and self._tool_calls):
            message = tool_call_chunk_message(event.tool_call, self._tool_calls)
            self._tool_calls += 1
        elif isinstance(event, DoneEvent):
            message = final_chunk(event.generation)
        return [] if message is None else [ChatGenerationChunk(message=message)]


def _whole(result: ChatResult) -> ChatGenerationChunk:
    message = result.generations[0].message
    assert isinstance(message, AIMessage)
    chunk = AIMessageChunk(
        content=message.content,
        additional_kwargs=message.additional_kwargs,
        response_metadata=message.response_metadata,
        usage_metadata=message.usage_metadata,
        tool_call_chunks=[
            tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=index)
            for index, call in enumerate(message.tool_calls)
        ]
        + [
            tool_call_chunk(name=call["name"], args=call["args"], id=call["id"], index=len(message.tool_calls) + index)
            for index, call in enumerate(message.invalid_tool_calls)
        ],
        chunk_position="last",
    )
    return ChatGenerationChunk(message=chunk)


def _aggregate(chunks: Iterator[ChatGenerationChunk] | list[ChatGenerationChunk]) -> ChatGenerationChunk:
    total: ChatGenerationChunk | None = None
    for chunk in chunks:
        total = chunk if total is None else total + chunk
    assert total is not None, "a stream ends with its final chunk"
    return total


def _result(chunk: ChatGenerationChunk) -> ChatResult:
    message = chunk.message
    assert isinstance(message, AIMessageChunk)
    return ChatResult(generations=[ChatGeneration(message=message_chunk_to_message(message))])
