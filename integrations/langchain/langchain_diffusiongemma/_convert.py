"""LangChain messages to the SDK's, and the SDK's generations and stream events to LangChain messages and chunks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_openai_messages
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk

from diffusiongemma_sdk import Generation, ToolCall, Usage

__all__ = [
    "MODEL_PROVIDER",
    "ai_message",
    "final_chunk",
    "reasoning_chunk",
    "response_metadata",
    "sdk_messages",
    "tool_call_chunk_message",
]

MODEL_PROVIDER = "diffusiongemma"


def sdk_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """The conversation as OpenAI-style dicts the SDK reads: content blocks become text and image parts, an
    assistant's reasoning (`reasoning_content`, or reasoning blocks) its `reasoning`."""
    converted: list[dict[str, Any]] = convert_to_openai_messages(list(messages))
    for original, message in zip(messages, converted, strict=True):
        if message["role"] != "assistant":
            continue
        reasoning = [original.additional_kwargs.get("reasoning_content") or ""]
        content = message.get("content")
        if isinstance(content, list):
            reasoning += [part.get("reasoning", "") for part in content if part.get("type") == "reasoning"]
            message["content"] = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        if any(reasoning):
            message["reasoning"] = "".join(reasoning)
    return converted


def ai_message(
    generation: Generation, *, single_tool_call: bool = False, errors: Mapping[str, str] | None = None
) -> AIMessage:
    """A finished generation as an `AIMessage`: tool calls (`errors`: why a call is invalid, by call id),
    reasoning, usage and metadata."""
    calls = generation.tool_calls[:1] if single_tool_call else generation.tool_calls
    valid = [call for call in calls if call.raw_arguments is None]
    return AIMessage(
        content=generation.text,
        additional_kwargs=_reasoning_kwargs(generation.reasoning),
        tool_calls=[tool_call(name=call.name, args=call.arguments, id=call.id) for call in valid],
        invalid_tool_calls=[_invalid(call, errors) for call in calls if call.raw_arguments is not None],
        usage_metadata=usage_metadata(generation.usage),
        response_metadata=response_metadata(generation),
        id=generation.id,
    )


def reasoning_chunk(text: str) -> AIMessageChunk:
    return AIMessageChunk(content="", additional_kwargs=_reasoning_kwargs(text))


def tool_call_chunk_message(call: ToolCall, index: int) -> AIMessageChunk:
    """One complete tool call as a streamed chunk (the SDK streams calls whole)."""
    arguments = call.raw_arguments if call.raw_arguments is not None else json.dumps(call.arguments)
    return AIMessageChunk(
        content="", tool_call_chunks=[tool_call_chunk(name=call.name, args=arguments, id=call.id, index=index)]
    )


def final_chunk(generation: Generation) -> AIMessageChunk:
    """The last chunk of a stream: usage and metadata, once."""
    return AIMessageChunk(
        content="",
        usage_metadata=usage_metadata(generation.usage),
        response_metadata=response_metadata(generation),
        chunk_position="last",
    )


def usage_metadata(usage: Usage) -> UsageMetadata:
    counts = {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
    return cast("UsageMetadata", {**counts, "total_tokens": usage.total_tokens})


def response_metadata(generation: Generation) -> dict[str, Any]:
    """`model_name`, `finish_reason`, `model_provider`, and the diffusion statistics the backend reported."""
    usage = generation.usage
    diffusion = {
        "canvases": usage.canvases,
        "denoising_steps": usage.denoising_steps,
        "tokens_per_forward": usage.tokens_per_forward,
        "ttft_s": usage.ttft_s,
        "wall_s": usage.wall_s,
    }
    return {
        "model_name": generation.model or generation.backend,
        "finish_reason": generation.finish_reason,
        "model_provider": MODEL_PROVIDER,
        "diffusion": {name: value for name, value in diffusion.items() if value is not None},
    }


def _reasoning_kwargs(reasoning: str | None) -> dict[str, Any]:
    return {"reasoning_content": reasoning} if reasoning else {}


def _invalid(call: ToolCall, errors: Mapping[str, str] | None) -> Any:
    why = (errors or {}).get(call.id, "The arguments are not a JSON object.")
    return invalid_tool_call(name=call.name, args=call.raw_arguments, id=call.id, error=why)
