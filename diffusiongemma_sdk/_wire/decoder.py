"""`chat.completion` bodies and `chat.completion.chunk` events back into stream events and a `Generation`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diffusiongemma_sdk._accumulator import GenerationAccumulator
from diffusiongemma_sdk._types import (
    DoneEvent,
    FinishReason,
    Generation,
    ReasoningEvent,
    StreamEvent,
    ToolCallEvent,
    Usage,
)
from diffusiongemma_sdk._wire.fields import finish_reason_from_json, tool_call_from_json, usage_from_json

__all__ = ["ChunkDecoder", "generation_from_completion"]

_KNOWN_TOP = {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
_KNOWN_CHOICE = {"index", "message", "delta", "finish_reason", "logprobs"}
_KNOWN_MESSAGE = {"role", "content", "reasoning", "reasoning_content", "tool_calls", "refusal"}


def generation_from_completion(body: Mapping[str, Any], *, backend: str) -> Generation:
    """Read a non-streaming `chat.completion` body, through the same path as a stream."""
    decoder = ChunkDecoder(backend)
    choices = body.get("choices") or []
    decoder.feed({**body, "choices": [{**choice, "delta": choice.get("message") or {}} for choice in choices[:1]]})
    done = decoder.finish()[-1]
    assert isinstance(done, DoneEvent)
    return done.generation


@dataclass
class _PendingToolCall:
    id: str | None = None
    name: str = ""
    arguments: str = ""


class ChunkDecoder:
    """Turns a server's chunks into events; the generation is assembled by a `GenerationAccumulator`.

    Content goes through the Gemma 4 parser, so thought markup and tool-call markup that a server leaves in the
    content become reasoning and tool calls. Tool calls the server parsed are accumulated by `index` (or by order
    when a server sends whole calls without one) and complete at the end. Usage keeps the last value seen, summing
    only when a server reports increments.
    """

    def __init__(self, backend: str) -> None:
        self.accumulator = GenerationAccumulator(backend)
        self.finish_reason: FinishReason | None = None
        self._usage: Usage | None = None
        self._identity: dict[str, Any] = {"model": None, "id": None, "extra": {}}
        self._pending: dict[int, _PendingToolCall] = {}

    def feed(self, chunk: Mapping[str, Any]) -> list[StreamEvent]:
        """Take one chunk; return the events it completes."""
        identity, extra = self._identity, self._identity["extra"]
        identity["id"] = chunk.get("id") or identity["id"]
        identity["model"] = chunk.get("model") or identity["model"]
        extra.update({k: v for k, v in chunk.items() if k not in _KNOWN_TOP})
        if isinstance(chunk.get("usage"), Mapping):
            self._merge_usage(usage_from_json(chunk["usage"]))
        events: list[StreamEvent] = []
        for choice in (chunk.get("choices") or [])[:1]:
            extra.update({k: v for k, v in choice.items() if k not in _KNOWN_CHOICE})
            delta = choice.get("delta") or {}
            extra.update({k: v for k, v in delta.items() if k not in _KNOWN_MESSAGE})
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                events.append(ReasoningEvent(text_delta=reasoning))
                self.accumulator.add(events[-1])
            if delta.get("content"):
                events += self.accumulator.add_model_text(delta["content"])
            for call in delta.get("tool_calls") or []:
                self._add_tool_call_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = finish_reason_from_json(choice["finish_reason"])
        return events

    def finish(self) -> list[StreamEvent]:
        """At the end of the stream: text the parser held back, the server's tool calls, usage and `DoneEvent`."""
        events = self.accumulator.close()
        for _, pending in sorted(self._pending.items()):
            call = tool_call_from_json({"id": pending.id, "name": pending.name, "arguments": pending.arguments})
            events.append(ToolCallEvent(tool_call=call))
            self.accumulator.add(events[-1])
        return events + self.accumulator.final_events(
            self.finish_reason or "stop", usage=self._usage or Usage(), **self._identity
        )

    def partial(self) -> Generation:
        """What was received before a stream broke off, marked `cancelled`."""
        return self.accumulator.partial()

    def _add_tool_call_delta(self, call: Mapping[str, Any]) -> None:
        index = call.get("index")
        if not isinstance(index, int):  # a whole call without an index: a new call
            index = max(self._pending, default=-1) + 1
        pending = self._pending.setdefault(index, _PendingToolCall())
        function = call.get("function") or {}
        pending.id = call.get("id") or pending.id
        pending.name += function.get("name") or ""
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):
            arguments = json.dumps(arguments)
        pending.arguments += arguments or ""

    def _merge_usage(self, new: Usage) -> None:
        if self._usage is not None and new.completion_tokens < self._usage.completion_tokens:
            # a smaller count than before means the server reports increments
            prompt = max(self._usage.prompt_tokens, new.prompt_tokens)
            completion = self._usage.completion_tokens + new.completion_tokens
            new = new.model_copy(
                update={"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            )
        self._usage = new
