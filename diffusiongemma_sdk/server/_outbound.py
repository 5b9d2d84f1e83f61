"""SDK results out as OpenAI JSON: `chat.completion` bodies, `chat.completion.chunk` SSE events, model entries.

Reasoning goes out as `reasoning` and `reasoning_content` (vLLM and NIM use either name). `usage` carries the
diffusion statistics (`canvases`, `denoising_steps`, ...) next to the token counts. Denoise drafts, asked for with
`diffusing: true`, go out as SSE comment lines (`: denoise_step {json}`), which every SSE client skips.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from diffusiongemma_sdk._backend import Capabilities
from diffusiongemma_sdk._remote.sse import DONE
from diffusiongemma_sdk._remote.wire import USAGE_EXTRAS, draft_comment
from diffusiongemma_sdk._types import (
    CanvasEvent,
    DenoiseStepEvent,
    DoneEvent,
    FinishReason,
    Generation,
    ReasoningEvent,
    StreamEvent,
    ToolCall,
    ToolCallEvent,
    Usage,
)

__all__ = ["SSE_DONE", "Completion", "completion_json", "model_entry", "sse_chunks", "sse_data", "usage_json"]

OWNER = "diffusiongemma-sdk"
SSE_DONE = f"data: {DONE}\n\n".encode()
_FINISH_REASONS: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "cancelled": "abort",
}


@dataclass(frozen=True)
class Completion:
    """The identity every chunk of one completion repeats."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


def model_entry(model: str, created: int, capabilities: Capabilities) -> dict[str, Any]:
    """A `GET /v1/models` entry; `capabilities` tells clients (the SDK's `openai:` backend) what may be asked."""
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": OWNER,
        "capabilities": capabilities.model_dump(mode="json"),
    }


def usage_json(usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    body.update({name: getattr(usage, name) for name in USAGE_EXTRAS if getattr(usage, name) is not None})
    return body


def completion_json(generation: Generation, completion: Completion, *, single_tool_call: bool) -> dict[str, Any]:
    """The `chat.completion` body of a finished generation."""
    calls = generation.tool_calls[:1] if single_tool_call else generation.tool_calls
    message: dict[str, Any] = {"role": "assistant", "content": generation.text or (None if calls else "")}
    if generation.reasoning is not None:
        message["reasoning"] = message["reasoning_content"] = generation.reasoning
    if calls:
        message["tool_calls"] = [_tool_call_json(call) for call in calls]
    return {
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(generation), "logprobs": None}],
        "usage": usage_json(generation.usage),
    }


def sse_data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def sse_chunks(
    events: AsyncIterator[StreamEvent],
    completion: Completion,
    *,
    include_usage: bool,
    diffusing: bool,
    single_tool_call: bool,
) -> AsyncGenerator[bytes, None]:
    """The SSE body of a streamed completion, ending with `data: [DONE]`; closing it closes `events`.

    Nothing is sent before the backend's first event, so a request that fails at once still gets an HTTP error.
    """
    chunks = _ChunkWriter(completion, include_usage=include_usage)
    tool_calls = 0
    generation: Generation | None = None
    try:
        async for event in events:
            if not chunks.started:
                yield chunks.delta({"role": "assistant", "content": ""})
            if isinstance(event, DenoiseStepEvent):
                if diffusing:
                    yield draft_comment(event).encode()
            elif isinstance(event, CanvasEvent):
                if event.text_delta:
                    yield chunks.delta({"content": event.text_delta})
            elif isinstance(event, ReasoningEvent):
                if event.text_delta:
                    yield chunks.delta({"reasoning": event.text_delta, "reasoning_content": event.text_delta})
            elif isinstance(event, ToolCallEvent):
                if not (single_tool_call and tool_calls):
                    yield chunks.delta({"tool_calls": [_tool_call_json(event.tool_call, index=tool_calls)]})
                    tool_calls += 1
            elif isinstance(event, DoneEvent):
                generation = event.generation
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    if generation is None:
        raise RuntimeError("the backend's stream ended without its final generation")
    if not chunks.started:
        yield chunks.delta({"role": "assistant", "content": ""})
    yield chunks.delta({}, _finish_reason(generation))
    if include_usage:
        yield chunks.usage(generation.usage)
    yield SSE_DONE


class _ChunkWriter:
    """`chat.completion.chunk` events of one completion."""

    def __init__(self, completion: Completion, *, include_usage: bool) -> None:
        self.completion = completion
        self.include_usage = include_usage
        self.started = False

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        self.started = True
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        extra = {"usage": None} if self.include_usage else {}  # as OpenAI does: only the last chunk has usage
        return sse_data({**self._head(), "choices": [choice], **extra})

    def usage(self, usage: Usage) -> bytes:
        return sse_data({**self._head(), "choices": [], "usage": usage_json(usage)})

    def _head(self) -> dict[str, Any]:
        c = self.completion
        return {"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model}


def _tool_call_json(call: ToolCall, *, index: int | None = None) -> dict[str, Any]:
    arguments = call.raw_arguments if call.raw_arguments is not None else json.dumps(call.arguments)
    body: dict[str, Any] = {} if index is None else {"index": index}
    body.update({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}})
    return body


def _finish_reason(generation: Generation) -> str:
    if generation.tool_calls and generation.finish_reason == "stop":
        return "tool_calls"
    return _FINISH_REASONS[generation.finish_reason]
