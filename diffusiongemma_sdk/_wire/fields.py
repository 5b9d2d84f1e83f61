"""The JSON of each piece of a chat completion, in both directions: messages, tools, tool calls, usage, finish
reasons, denoise drafts and model entries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError

from diffusiongemma_sdk._backend import Capabilities
from diffusiongemma_sdk._gemma4 import parse_gemma_value
from diffusiongemma_sdk._tools import Tool
from diffusiongemma_sdk._types import DenoiseStepEvent, FinishReason, ImagePart, Message, ToolCall, Usage
from diffusiongemma_sdk._wire.sse import sse_comment

__all__ = [
    "DRAFT_COMMENT",
    "USAGE_EXTRAS",
    "capabilities_from_model",
    "draft_comment",
    "finish_reason_from_json",
    "finish_reason_json",
    "message_json",
    "model_json",
    "parse_draft_comment",
    "parse_tool_arguments",
    "tool_call_from_json",
    "tool_call_json",
    "tool_json",
    "usage_from_json",
    "usage_json",
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
# The one finish-reason table; reading also takes the names other servers use.
FINISH_REASONS: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "cancelled": "abort",
}
_FINISH_REASON_ALIASES: dict[str, FinishReason] = {
    "eos": "stop",
    "function_call": "tool_calls",
    "cancelled": "cancelled",
}
_FINISH_REASONS_READ: dict[str, FinishReason] = {
    **{wire: ours for ours, wire in FINISH_REASONS.items()},
    **_FINISH_REASON_ALIASES,
}


def finish_reason_json(reason: FinishReason) -> str:
    """The wire name of a finish reason."""
    return FINISH_REASONS[reason]


def finish_reason_from_json(value: str) -> FinishReason:
    """A server's finish reason; names this SDK does not know read as `stop`."""
    return _FINISH_REASONS_READ.get(value, "stop")


def tool_json(tool: Tool) -> dict[str, Any]:
    """A tool declaration, `{"type": "function", "function": {...}}`."""
    return {"type": "function", "function": tool.model_dump(mode="json")}


def tool_call_json(
    call: ToolCall, *, index: int | None = None, arguments: Literal["json", "object"] = "json"
) -> dict[str, Any]:
    """A tool call in OpenAI form. `arguments="json"` writes them as JSON text (the model's own text when it was not
    JSON); `"object"` keeps the dict, as chat templates take it. `index` is a streamed call's position."""
    body: dict[str, Any] = {} if index is None else {"index": index}
    written: Any = call.arguments
    if arguments == "json":
        written = call.raw_arguments if call.raw_arguments is not None else json.dumps(call.arguments)
    body.update({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": written}})
    return body


def tool_call_from_json(call: Mapping[str, Any]) -> ToolCall:
    """A tool call in OpenAI form (`function.arguments` as JSON text or an object) or as `ToolCall.model_dump()`.

    Arguments that are neither JSON nor Gemma's object notation are kept in `raw_arguments`, so nothing is lost.
    """
    function = call.get("function")
    if isinstance(function, Mapping):
        fields: dict[str, Any] = {"name": function["name"], **parse_tool_arguments(function.get("arguments"))}
    else:
        fields = {"name": call["name"], **parse_tool_arguments(call.get("arguments"))}
    if call.get("id"):
        fields["id"] = call["id"]
    return ToolCall.model_validate(fields)


def parse_tool_arguments(arguments: Any) -> dict[str, Any]:
    """`ToolCall`'s `arguments` (and `raw_arguments` when they do not parse) from what a call carries."""
    if arguments is None or isinstance(arguments, Mapping):
        return {"arguments": dict(arguments or {})}
    text = str(arguments)
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


def message_json(message: Message) -> dict[str, Any]:
    """A message as a chat-completions body carries it."""
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
        wire["tool_calls"] = [tool_call_json(call) for call in message.tool_calls]
        if not message.content:
            wire["content"] = None
    if message.tool_call_id:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def usage_json(usage: Usage) -> dict[str, Any]:
    """Token counts, and the diffusion statistics that are known."""
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    body.update({name: getattr(usage, name) for name in USAGE_EXTRAS if getattr(usage, name) is not None})
    return body


def usage_from_json(raw: Mapping[str, Any]) -> Usage:
    """A server's `usage` object; a missing total is the sum of the two counts."""
    usage = Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        total_tokens=int(raw.get("total_tokens") or 0),
    )
    if not usage.total_tokens:
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    for name, kind in USAGE_EXTRAS.items():
        value = raw.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(usage, name, kind(value))
    return usage


def draft_comment(event: DenoiseStepEvent) -> bytes:
    """The SSE comment line that carries a denoise draft."""
    return sse_comment(f"{DRAFT_COMMENT} {event.model_dump_json(exclude={'type'})}")


def parse_draft_comment(comment: str) -> DenoiseStepEvent | None:
    """The draft in an SSE comment's text, or None for any other comment (keep-alives and the like)."""
    name, _, payload = comment.partition(" ")
    if name != DRAFT_COMMENT:
        return None
    try:
        return DenoiseStepEvent.model_validate_json(payload)
    except ValueError:
        return None


def model_json(model: str, created: int, owner: str, capabilities: Capabilities) -> dict[str, Any]:
    """A `GET /v1/models` entry; `capabilities` tells clients (the SDK's `openai:` backend) what may be asked."""
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": owner,
        "capabilities": capabilities.model_dump(mode="json"),
    }


def capabilities_from_model(entry: Mapping[str, Any]) -> Capabilities | None:
    """The capabilities a models entry advertises; None when it advertises none this SDK can read."""
    advertised = entry.get("capabilities")
    if not isinstance(advertised, Mapping):
        return None
    try:
        return Capabilities.model_validate(advertised)
    except ValidationError:
        return None
