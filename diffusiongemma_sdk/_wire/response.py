"""A `Generation` as a `chat.completion` body, and a stream's events as `chat.completion.chunk` SSE events.

Reasoning goes out as `reasoning` and `reasoning_content` (vLLM and NIM use either name). `usage` carries the
diffusion statistics (`canvases`, `denoising_steps`, ...) next to the token counts.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from diffusiongemma_sdk._types import Generation, ToolCall, Usage
from diffusiongemma_sdk._wire.fields import finish_reason_json, tool_call_json, usage_json
from diffusiongemma_sdk._wire.sse import sse_data

__all__ = ["ChunkWriter", "CompletionIdentity", "completion_json"]


@dataclass(frozen=True)
class CompletionIdentity:
    """What every chunk of one completion repeats."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def completion_json(generation: Generation, identity: CompletionIdentity, *, single_tool_call: bool) -> dict[str, Any]:
    """The `chat.completion` body of a finished generation."""
    calls = generation.tool_calls[:1] if single_tool_call else generation.tool_calls
    message: dict[str, Any] = {"role": "assistant", "content": generation.text or (None if calls else "")}
    if generation.reasoning is not None:
        message["reasoning"] = message["reasoning_content"] = generation.reasoning
    if calls:
        message["tool_calls"] = [tool_call_json(call) for call in calls]
    choice = {"index": 0, "message": message, "finish_reason": _finish(generation), "logprobs": None}
    return {**identity.head("chat.completion"), "choices": [choice], "usage": usage_json(generation.usage)}


class ChunkWriter:
    """The `chat.completion.chunk` SSE events of one completion."""

    def __init__(self, identity: CompletionIdentity, *, include_usage: bool) -> None:
        self.identity = identity
        self.include_usage = include_usage
        self.started = False
        self._tool_calls = 0

    def opening(self) -> bytes:
        return self._delta({"role": "assistant", "content": ""})

    def content(self, text: str) -> bytes:
        return self._delta({"content": text})

    def reasoning(self, text: str) -> bytes:
        return self._delta({"reasoning": text, "reasoning_content": text})

    def tool_call(self, call: ToolCall) -> bytes:
        self._tool_calls += 1
        return self._delta({"tool_calls": [tool_call_json(call, index=self._tool_calls - 1)]})

    def finish(self, generation: Generation) -> bytes:
        return self._delta({}, _finish(generation))

    def usage(self, usage: Usage) -> bytes:
        return sse_data({**self.identity.head("chat.completion.chunk"), "choices": [], "usage": usage_json(usage)})

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        self.started = True
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        extra = {"usage": None} if self.include_usage else {}  # as OpenAI does: only the last chunk has usage
        return sse_data({**self.identity.head("chat.completion.chunk"), "choices": [choice], **extra})


def _finish(generation: Generation) -> str:
    return finish_reason_json(generation.finish_reason)
