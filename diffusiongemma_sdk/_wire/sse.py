"""Server-sent events: JSON payloads and comment lines framed as `text/event-stream`, and read back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from diffusiongemma_sdk._errors import APIResponseValidationError

__all__ = ["DONE", "SSE_DONE", "SSEComment", "iter_sse_items", "sse_comment", "sse_data"]

DONE = "[DONE]"
SSE_DONE = f"data: {DONE}\n\n".encode()


@dataclass(frozen=True)
class SSEComment:
    """A comment line (`: text`), with the colon and one following space removed."""

    text: str


def sse_data(payload: dict[str, Any]) -> bytes:
    """One `data:` event carrying `payload` as compact JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def sse_comment(text: str) -> bytes:
    """One comment line (with its blank line), which every SSE client skips."""
    return f": {text}\n\n".encode()


async def iter_sse_items(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any] | SSEComment]:
    """Yield each event's JSON data, and each comment line, until `[DONE]` or the end of the lines.

    Follows the SSE rules that matter here: `data:` lines of one event are joined with newlines, a blank line ends
    the event, other fields are skipped. An `event: error` event is yielded like any other; the caller recognizes
    error payloads. Comment lines (starting with ':') carry nothing for plain clients; `diffusiongemma serve` sends
    denoise drafts in them.
    """
    data: list[str] = []
    async for line in lines:
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
