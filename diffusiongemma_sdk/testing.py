"""A backend for tests: the whole client path (policy, deadline, retries, streams, structured output) with neither
torch nor a server, in the spirit of pydantic-ai's `TestModel` and `FunctionModel`.

    from diffusiongemma_sdk import AsyncDiffusionGemma, Generation, ToolCall
    from diffusiongemma_sdk.testing import TestBackend

    client = AsyncDiffusionGemma("test")                    # answers by itself (see `TestBackend`)
    client = AsyncDiffusionGemma("test:4 9 17")             # always answers "4 9 17"
    backend = TestBackend(["4 9 17", Generation(tool_calls=[ToolCall(name="add", arguments={"a": 1, "b": 2})])])
    backend = TestBackend(lambda request: request.messages[-1].text.upper())  # a function of the request
    client = AsyncDiffusionGemma(backend)
    ...
    assert backend.requests[0].max_tokens == 64             # what the application sent, as the backend got it

It honours every request field the way a local engine does, so application code behaves as on `torch:`: a "token" is
a word of the answer, a canvas `canvas_words` of them.
"""

from __future__ import annotations

import inspect
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio

from diffusiongemma_sdk._accumulator import GenerationAccumulator
from diffusiongemma_sdk._backend import Backend, BackendOptions, Capabilities, GenerationRequest
from diffusiongemma_sdk._errors import ConfigurationError
from diffusiongemma_sdk._tools import Tool
from diffusiongemma_sdk._types import (
    CanvasEvent,
    DenoiseStepEvent,
    DoneEvent,
    Generation,
    Message,
    ReasoningEvent,
    StreamEvent,
    ToolCall,
    ToolCallEvent,
    Usage,
)

__all__ = [
    "DEFAULT_ANSWER",
    "TEST_CAPABILITIES",
    "Reply",
    "ReplyFunction",
    "ScriptError",
    "TestBackend",
    "create_test_backend",
    "example_value",
]

DEFAULT_ANSWER = "test answer"
DEFAULT_REASONING = "test reasoning"
DEFAULT_STEPS = 4
"""Denoising steps per canvas when the request sets no `max_denoising_steps`."""

TEST_CAPABILITIES = Capabilities(
    per_request_diffusion=True, denoise_stream=True, images=True, native_structured_output=True
)
"""Everything a request can ask for; pass other `capabilities` to play a backend that lacks some (hosted NIM)."""

Reply = str | Generation | BaseException
"""One answer: its text, a whole `Generation` (reasoning, tool calls, finish reason), or an error to raise."""
ReplyFunction = Callable[[GenerationRequest], Reply | Awaitable[Reply]]


class ScriptError(AssertionError):
    """A scripted reply contradicts the request it answers (a tool call under tool_choice="none", say)."""


class TestBackend(Backend):
    """Answers requests from a script, a function, or by itself.

    - `replies`: a list played in order, one per request; running out raises `ScriptError`.
    - a function of the `GenerationRequest`, sync or async, returning a reply.
    - neither: it answers by itself: a call of the tool `tool_choice` names (else the first tool) with arguments
      made from its schema, unless tool_choice is "none" or the conversation ends with tool results (then their
      contents); a JSON value matching `response_schema` when there is one; else `answer`.

    Every field is honoured: `thinking` (reasoning only when on; `DEFAULT_REASONING` if the reply has none),
    `max_tokens` (the text cut to that many words, finish reason "length"), `stop`, `tool_choice` (a reply that
    breaks it raises `ScriptError`), `diffusion.max_denoising_steps` (steps per canvas), `drafts` (a `denoise_step`
    event per step, revealing the canvas), `response_schema`; `event_delay` seconds pass before each event, so
    deadlines and cancellation can be tested. `requests` records every request received.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        replies: Iterable[Reply] | ReplyFunction | None = None,
        *,
        answer: str = DEFAULT_ANSWER,
        capabilities: Capabilities = TEST_CAPABILITIES,
        canvas_words: int = 8,
        event_delay: float = 0.0,
        name: str = "test",
    ) -> None:
        if canvas_words < 1:
            raise ConfigurationError("canvas_words must be at least 1")
        self.name = name
        self.answer = answer
        self.canvas_words = canvas_words
        self.event_delay = event_delay
        self.requests: list[GenerationRequest] = []
        self._capabilities = capabilities
        self._function: ReplyFunction | None = replies if callable(replies) else None
        self._script: deque[Reply] | None = None if replies is None or callable(replies) else deque(replies)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def generate(self, request: GenerationRequest) -> Generation:
        async for event in self.stream(request):
            if isinstance(event, DoneEvent):
                return event.generation
        raise AssertionError("unreachable: a stream ends with its DoneEvent")  # pragma: no cover

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        reply = await self._reply(request)
        if isinstance(reply, BaseException):
            raise reply
        playback = _Playback(self.name, request, _honoured(request, _as_generation(reply, request)), self.canvas_words)
        for event in playback.events():
            if self.event_delay:
                await anyio.sleep(self.event_delay)
            yield event

    async def _reply(self, request: GenerationRequest) -> Reply:
        if self._function is not None:
            reply = self._function(request)
            return await reply if inspect.isawaitable(reply) else reply
        if self._script is not None:
            if not self._script:
                raise ScriptError(f"The test backend's script has no reply left for request {len(self.requests)}.")
            return self._script.popleft()
        return _own_reply(request, self.answer)


def create_test_backend(target: str, options: BackendOptions) -> TestBackend:
    """`test` (answers by itself) or `test:<text>` (always answers `<text>`); the `test` spec scheme."""
    if options.extra:
        raise ConfigurationError(
            f"The test backend takes no backend_options (got {', '.join(options.extra)}); build a TestBackend "
            "yourself to set canvas_words, event_delay or capabilities."
        )
    return TestBackend(answer=target or DEFAULT_ANSWER, name=f"test:{target}" if target else "test")


def example_value(schema: Mapping[str, Any], definitions: Mapping[str, Any] | None = None) -> Any:
    """A small value that matches a JSON schema (the first of any choice, every property of an object)."""
    definitions = {**(definitions or {}), **schema.get("$defs", {}), **schema.get("definitions", {})}
    if "$ref" in schema:
        return example_value(definitions[str(schema["$ref"]).rsplit("/", 1)[-1]], definitions)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for choice in ("anyOf", "oneOf", "allOf"):
        if schema.get(choice):
            return example_value(schema[choice][0], definitions)
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example_value(sub, definitions) for name, sub in properties.items()}
    if kind == "array":
        items = schema.get("items", {})
        return [example_value(items, definitions)] * max(int(schema.get("minItems", 1)), 1)
    simple: dict[str, Any] = {"string": "a", "integer": 1, "number": 1.5, "boolean": True, "null": None}
    return simple.get(kind)


def _own_reply(request: GenerationRequest, answer: str) -> Generation:
    """What the backend answers when nothing is scripted."""
    results = _trailing_tool_results(request.messages)
    if request.tools and request.tool_choice != "none" and not results:
        tool = _called_tool(request.tools, request.tool_choice)
        return Generation(tool_calls=[ToolCall(name=tool.name, arguments=example_value(tool.parameters))])
    if results:
        return Generation(text=" ".join(message.text for message in results))
    if request.response_schema is not None:
        return Generation(text=json.dumps(example_value(request.response_schema)))
    return Generation(text=answer)


def _trailing_tool_results(messages: list[Message]) -> list[Message]:
    results: list[Message] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        results.insert(0, message)
    return results


def _called_tool(tools: list[Tool], choice: str | None) -> Tool:
    return next((tool for tool in tools if tool.name == choice), tools[0])


def _as_generation(reply: str | Generation, request: GenerationRequest) -> Generation:
    generation = Generation(text=reply) if isinstance(reply, str) else reply
    if request.thinking and generation.reasoning is None:
        generation = generation.model_copy(update={"reasoning": DEFAULT_REASONING})
    return generation


def _honoured(request: GenerationRequest, reply: Generation) -> Generation:
    """The reply with thinking, stop and max_tokens applied; a reply that breaks tool_choice raises `ScriptError`."""
    names = {call.name for call in reply.tool_calls}
    if request.tool_choice == "none" and names:
        raise ScriptError(f"The scripted reply calls {sorted(names)} but the request has tool_choice='none'.")
    if request.tool_choice == "required" and not names:
        raise ScriptError("The scripted reply calls no tool but the request has tool_choice='required'.")
    if request.tool_choice not in (None, "auto", "none", "required") and names != {request.tool_choice}:
        raise ScriptError(f"The scripted reply must call only {request.tool_choice!r}, as tool_choice says.")
    text, finish = reply.text, reply.finish_reason
    reasoning = reply.reasoning if request.thinking else None
    cut = min((index for index in (text.find(stop) for stop in request.stop) if index >= 0), default=-1)
    if cut >= 0:
        text, finish = text[:cut], "stop"
    words = text.split()
    calls = reply.tool_calls
    if request.max_tokens is not None and len(words) > request.max_tokens:
        text, finish, calls = " ".join(words[: request.max_tokens]), "length", []
    return reply.model_copy(update={"text": text, "reasoning": reasoning, "tool_calls": calls, "finish_reason": finish})


class _Playback:
    """A reply turned into the events a local engine streams: reasoning, canvases (with drafts when asked), tool
    calls, usage and the final generation."""

    def __init__(self, backend: str, request: GenerationRequest, reply: Generation, canvas_words: int) -> None:
        self.backend = backend
        self.request = request
        self.reply = reply
        diffusion = request.diffusion
        steps = diffusion.max_denoising_steps if diffusion is not None else None
        self.steps = steps or DEFAULT_STEPS
        words = reply.text.split()
        self.canvases = [words[start : start + canvas_words] for start in range(0, len(words), canvas_words)]

    def events(self) -> list[StreamEvent]:
        accumulator = GenerationAccumulator(self.backend)
        events: list[StreamEvent] = []
        if self.reply.reasoning:
            events.append(ReasoningEvent(text_delta=self.reply.reasoning))
        for index, canvas in enumerate(self.canvases):
            if self.request.drafts:
                events += [self._draft(index, canvas, step) for step in range(1, self.steps + 1)]
            events.append(_canvas_event(index, canvas, last=index == len(self.canvases) - 1, steps=self.steps))
        events += [ToolCallEvent(tool_call=call) for call in self.reply.tool_calls]
        for event in events:
            accumulator.add(event)
        return events + accumulator.final_events(self.reply.finish_reason, usage=self._usage(), model="test")

    def _draft(self, index: int, canvas: list[str], step: int) -> DenoiseStepEvent:
        shown = len(canvas) * step // self.steps
        return DenoiseStepEvent(
            canvas_index=index,
            step=step,
            draft_text=" ".join(canvas[:shown]),
            accepted_fraction=shown / len(canvas),
            mean_entropy=1.0 - shown / len(canvas),
        )

    def _usage(self) -> Usage:
        prompt = sum(len(message.text.split()) for message in self.request.messages)
        reasoning = len((self.reply.reasoning or "").split())
        completion = reasoning + sum(len(canvas) for canvas in self.canvases) + len(self.reply.tool_calls)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            canvases=len(self.canvases),
            denoising_steps=len(self.canvases) * self.steps,
        )


def _canvas_event(index: int, canvas: list[str], *, last: bool, steps: int) -> CanvasEvent:
    return CanvasEvent(canvas_index=index, text_delta=" ".join(canvas) + ("" if last else " "), steps=steps)
