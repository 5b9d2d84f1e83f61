"""A generation's events out as the SSE body of a streamed chat completion (the JSON shapes are the wire codec's).

Denoise drafts, asked for with `diffusing: true`, go out as SSE comment lines (`: denoise_step {json}`), which every
SSE client skips.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from diffusiongemma_sdk._client import GenerationStream
from diffusiongemma_sdk._types import CanvasEvent, DenoiseStepEvent, ReasoningEvent, ToolCallEvent
from diffusiongemma_sdk._wire.fields import draft_comment
from diffusiongemma_sdk._wire.response import ChunkWriter, CompletionIdentity
from diffusiongemma_sdk._wire.sse import SSE_DONE

__all__ = ["sse_chunks"]


async def sse_chunks(
    stream: GenerationStream, identity: CompletionIdentity, *, include_usage: bool, single_tool_call: bool
) -> AsyncGenerator[bytes, None]:
    """The SSE body of a streamed completion, ending with `data: [DONE]`; closing it closes `stream`.

    Nothing is sent before the backend's first event, so a request that fails at once still gets an HTTP error.
    """
    chunks = ChunkWriter(identity, include_usage=include_usage)
    tool_calls = 0
    async with stream:
        async for event in stream:
            if not chunks.started:
                yield chunks.opening()
            if isinstance(event, DenoiseStepEvent):
                yield draft_comment(event)  # the stream carries drafts only when the request asked for them
            elif isinstance(event, CanvasEvent) and event.text_delta:
                yield chunks.content(event.text_delta)
            elif isinstance(event, ReasoningEvent) and event.text_delta:
                yield chunks.reasoning(event.text_delta)
            elif isinstance(event, ToolCallEvent) and not (single_tool_call and tool_calls):
                yield chunks.tool_call(event.tool_call)
                tool_calls += 1
        generation = await stream.final()
    if not chunks.started:
        yield chunks.opening()
    yield chunks.finish(generation)
    if include_usage:
        yield chunks.usage(generation.usage)
    yield SSE_DONE
