"""Server-sent events: decode a streaming HTTP response into JSON payloads (and, on request, comment lines)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from diffusiongemma_sdk._errors import APIResponseValidationError

__all__ = ["DONE", "SSEComment", "iter_sse_items", "iter_sse_json"]

DONE = "[DONE]"


@dataclass(frozen=True)
class SSEComment:
    """A comment line (`: text`), with the colon and one following space removed."""

    text: str


async def iter_sse_json(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Yield each event's JSON data until `[DONE]` or the end of the body."""
    async for item in iter_sse_items(response):
        if not isinstance(item, SSEComment):
            yield item


async def iter_sse_items(response: httpx.Response) -> AsyncIterator[dict[str, Any] | SSEComment]:
    """Yield each event's JSON data, and each comment line, until `[DONE]` or the end of the body.

    Follows the SSE rules that matter here: `data:` lines of one event are joined with newlines, a blank line ends
    the event, other fields are skipped. An `event: error` event is yielded like any other; the caller recognizes
    error payloads. Comment lines (starting with ':') carry nothing for plain clients; `diffusiongemma serve` sends
    denoise drafts in them.
    """
    data: list[str] = []
    async for line in response.aiter_lines():
        if line:
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
            elif not field:
                yield SSEComment(value[1:] if value.startswith(" ") else value)
            continue
        if not data:
            continue
        payload, data = "\n".join(data), []
        if payload.strip() == DONE:
            return
        yield _decode(payload)
    if data and "\n".join(data).strip() != DONE:
        yield _decode("\n".join(data))


def _decode(payload: str) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise APIResponseValidationError(
            f"The server sent a stream event that is not JSON ({exc.msg}): {payload[:200]!r}"
        ) from None
    if not isinstance(value, dict):
        raise APIResponseValidationError(f"The server sent a stream event that is not a JSON object: {payload[:200]!r}")
    return value
