"""Server-sent events: decode a streaming HTTP response into JSON payloads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from diffusiongemma_sdk.errors import APIResponseValidationError

__all__ = ["DONE", "iter_sse_json"]

DONE = "[DONE]"


async def iter_sse_json(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Yield each event's JSON data until `[DONE]` or the end of the body.

    Follows the SSE rules that matter here: `data:` lines of one event are joined with newlines, a blank line ends
    the event, comment lines (starting with ':') and other fields are skipped. An `event: error` event is yielded
    like any other; the caller recognizes error payloads.
    """
    data: list[str] = []
    async for line in response.aiter_lines():
        if line:
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
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
