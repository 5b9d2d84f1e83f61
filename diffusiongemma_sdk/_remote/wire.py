"""The OpenAI chat-completions wire format: request bodies out, responses and stream chunks in."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from diffusiongemma_sdk._backend import GenerationRequest
from diffusiongemma_sdk._gemma4 import Gemma4StreamParser, Segment, parse_gemma_value
from diffusiongemma_sdk._types import (
    CanvasEvent,
    DenoiseStepEvent,
    FinishReason,
    Generation,
    ImagePart,
    Message,
    ReasoningEvent,
    StreamEvent,
    ToolCall,
    Usage,
)

__all__ = [
    "DRAFT_COMMENT",
    "USAGE_EXTRAS",
    "StreamAssembler",
    "build_body",
    "draft_comment",
    "generation_from_response",
    "parse_draft_comment",
]

# Extensions spoken by `diffusiongemma serve` (and only sent to servers that advertise them at GET /models):
# a `diffusion` body field with DiffusionParams' fields, and `diffusing: true`, which asks for each denoising step's
# draft as an SSE comment line `: denoise_step {json}`. Comments are the one SSE element every client skips:
# openai-python (3.51) turns events named with `event:` into chunks like any other, and fails on those without data.
DRAFT_COMMENT = "denoise_step"
# Diffusion statistics a server may add to `usage`, next to the token counts.
USAGE_EXTRAS: dict[str, type[int] | type[float]] = {
    "canvases": int,
    "denoising_steps": int,
    "tokens_per_forward": float,
    "ttft_s": float,
    "wall_s": float,
}

_KNOWN_TOP = {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
_KNOWN_CHOICE = {"index", "message", "delta", "finish_reason", "logprobs"}
_KNOWN_MESSAGE = {"role", "content", "reasoning", "reasoning_content", "tool_calls", "refusal"}
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "abort": "cancelled",
    "cancelled": "cancelled",
}


def build_body(request: GenerationRequest, *, model: str, stream: bool, drafts: bool = False) -> dict[str, Any]:
    """The JSON body of `POST /chat/completions`. SDK-only options never enter it.

    Per-request diffusion settings only reach a backend that declares them (the client's policy drops them
    otherwise) and go in a `diffusion` field; `drafts` asks a streaming server for denoise drafts (`diffusing`).
    """
    body: dict[str, Any] = {"model": model, "messages": [_wire_message(m) for m in request.messages]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if drafts:
            body["diffusing"] = True
    if request.diffusion is not None and not request.diffusion.is_empty():
        body["diffusion"] = request.diffusion.model_dump(mode="json", exclude_none=True)
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": request.thinking}
    if request.tools:
        body["tools"] = [{"type": "function", "function": tool.model_dump(mode="json")} for tool in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = _wire_tool_choice(request.tool_choice)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = request.stop
    return body


def draft_comment(event: DenoiseStepEvent) -> str:
    """The SSE comment line (with its blank line) that carries a denoise draft."""
    return f": {DRAFT_COMMENT} {event.model_dump_json(exclude={'type'})}\n\n"


def parse_draft_comment(comment: str) -> DenoiseStepEvent | None:
    """The draft in an SSE comment's text, or None for any other comment (keep-alives and the like)."""
    name, _, payload = comment.partition(" ")
    if name != DRAFT_COMMENT:
        return None
    try:
        return DenoiseStepEvent.model_validate_json(payload)
    except ValueError:
        return None


def generation_from_response(body: Mapping[str, Any], *, backend: str) -> Generation:
    """Read a non-streaming `chat.completion` body, through the same path as a stream."""
    assembler = StreamAssembler(backend=backend)
    choices = body.get("choices") or []
    as_chunk = {
        **body,
        "choices": [{**choice, "delta": choice.get("message") or {}} for choice in choices[:1]],
    }
    assembler.feed(as_chunk)
    return assembler.finish()


@dataclass
class _PendingToolCall:
    id: str | None = None
    name: str = ""
    arguments: str = ""

    def build(self) -> ToolCall:
        fields: dict[str, Any] = {"name": self.name, **_parse_arguments(self.arguments)}
        if self.id:
            fields["id"] = self.id
        return ToolCall.model_validate(fields)


@dataclass
class StreamAssembler:
    """Accumulates chunks into events and the final `Generation`.

    Content goes through the Gemma 4 parser, so thought markup and tool-call markup that a server leaves in the
    content are lifted into reasoning and tool calls. Tool calls are accumulated by `index`, or by order when a
    server sends whole calls without one. Usage keeps the last value seen, summing only when a server reports
    increments.
    """

    backend: str
    text: list[str] = field(default_factory=list)
    reasoning: list[str] | None = None
    usage: Usage | None = None
    finish_reason: FinishReason | None = None
    model: str | None = None
    id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _canvases: int = 0
    _parser: Gemma4StreamParser = field(default_factory=Gemma4StreamParser)
    _pending: dict[int, _PendingToolCall] = field(default_factory=dict)
    _parsed_calls: list[ToolCall] = field(default_factory=list)

    def feed(self, chunk: Mapping[str, Any]) -> list[StreamEvent]:
        """Take one chunk; return the events it completes."""
        self.id = chunk.get("id") or self.id
        self.model = chunk.get("model") or self.model
        self.extra.update({k: v for k, v in chunk.items() if k not in _KNOWN_TOP})
        if isinstance(chunk.get("usage"), Mapping):
            self._merge_usage(chunk["usage"])
        events: list[StreamEvent] = []
        for choice in (chunk.get("choices") or [])[:1]:
            self.extra.update({k: v for k, v in choice.items() if k not in _KNOWN_CHOICE})
            delta = choice.get("delta") or {}
            self.extra.update({k: v for k, v in delta.items() if k not in _KNOWN_MESSAGE})
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                events.append(self._reasoning(reasoning))
            if delta.get("content"):
                events += self._segments(self._parser.feed(delta["content"]))
            for call in delta.get("tool_calls") or []:
                self._add_tool_call_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = _FINISH_REASONS.get(choice["finish_reason"], "stop")
        return events

    def close(self) -> list[StreamEvent]:
        """Flush text held back by the parser at the end of the stream."""
        return self._segments(self._parser.close())

    def tool_calls(self) -> list[ToolCall]:
        """Every tool call received so far, server-parsed first, then those lifted from the content."""
        return [pending.build() for _, pending in sorted(self._pending.items())] + self._parsed_calls

    def finish(self) -> Generation:
        """The complete generation (call `close()` first when streaming)."""
        self.close()
        calls = self.tool_calls()
        finish_reason = self.finish_reason or "stop"
        if calls and finish_reason == "stop":
            finish_reason = "tool_calls"
        return self._generation(finish_reason, calls)

    def partial(self) -> Generation:
        """What was received before a stream broke off, marked `cancelled`."""
        return self._generation("cancelled", self.tool_calls())

    def _generation(self, finish_reason: FinishReason, calls: list[ToolCall]) -> Generation:
        return Generation(
            text="".join(self.text).rstrip(),
            reasoning=None if self.reasoning is None else "".join(self.reasoning).strip(),
            tool_calls=calls,
            finish_reason=finish_reason,
            usage=self.usage or Usage(),
            backend=self.backend,
            model=self.model,
            id=self.id,
            extra=self.extra,
        )

    def _segments(self, segments: list[Segment]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for segment in segments:
            if segment.kind == "reasoning":
                events.append(self._reasoning(segment.text))
            elif segment.tool_call is not None:
                self._parsed_calls.append(segment.tool_call)
            else:
                self.text.append(segment.text)
                events.append(CanvasEvent(canvas_index=self._canvases, text_delta=segment.text))
                self._canvases += 1
        return events

    def _reasoning(self, text: str) -> ReasoningEvent:
        if self.reasoning is None:
            self.reasoning = []
        self.reasoning.append(text)
        return ReasoningEvent(text_delta=text)

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

    def _merge_usage(self, raw: Mapping[str, Any]) -> None:
        new = Usage(
            prompt_tokens=int(raw.get("prompt_tokens") or 0),
            completion_tokens=int(raw.get("completion_tokens") or 0),
            total_tokens=int(raw.get("total_tokens") or 0),
        )
        if self.usage is not None and new.completion_tokens < self.usage.completion_tokens:
            new = Usage(  # a smaller count than before means the server reports increments
                prompt_tokens=max(self.usage.prompt_tokens, new.prompt_tokens),
                completion_tokens=self.usage.completion_tokens + new.completion_tokens,
                total_tokens=0,
            )
        if not new.total_tokens:
            new.total_tokens = new.prompt_tokens + new.completion_tokens
        for name, kind in USAGE_EXTRAS.items():
            value = raw.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(new, name, kind(value))
        self.usage = new


def _parse_arguments(text: str) -> dict[str, Any]:
    """Tool arguments as a dict; JSON first, then Gemma's object notation; else kept raw."""
    if not text.strip():
        return {"arguments": {}}
    for parse in (json.loads, parse_gemma_value):
        try:
            value = parse(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            return {"arguments": value}
    return {"arguments": {}, "raw_arguments": text}


def _wire_message(message: Message) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role}
    if isinstance(message.content, str):
        wire["content"] = message.content
    else:
        wire["content"] = [
            {"type": "image_url", "image_url": {"url": part.url}}
            if isinstance(part, ImagePart)
            else {"type": "text", "text": part.text}
            for part in message.content
        ]
    if message.name:
        wire["name"] = message.name
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in message.tool_calls
        ]
        if not message.content:
            wire["content"] = None
    if message.tool_call_id:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def _wire_tool_choice(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}
