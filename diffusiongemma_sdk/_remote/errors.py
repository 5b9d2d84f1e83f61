"""Turn a server's error answer (any of the shapes seen in the wild) into the SDK's typed error."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from diffusiongemma_sdk._errors import APIError, APIStatusError, status_error_class

__all__ = ["error_from_payload", "error_from_response", "parse_retry_after", "request_id_of"]

_REQUEST_ID_HEADERS = ("nvcf-reqid", "x-request-id", "request-id")
_HINTS = {
    401: "Check the API key (NVIDIA_API_KEY for nim, api_key= or DIFFUSIONGEMMA_API_KEY for openai: servers).",
    403: "The key may not use this model; check its permissions on build.nvidia.com or the server's settings.",
    404: "Check the model id and base URL (client.models() lists what the server serves).",
    429: "Rate limited: slow down, lower the concurrency, or raise max_retries.",
}


def error_from_response(response: httpx.Response, body_text: str) -> APIStatusError:
    """Build the typed error for an HTTP error response."""
    body = _json_or_text(body_text)
    status = response.status_code
    message = _message(body, response.headers) or response.reason_phrase or "error"
    hint = _HINTS.get(status)
    text = f"HTTP {status} from {response.request.url.host}: {message}" + (f". {hint}" if hint else "")
    return status_error_class(status)(
        text,
        status_code=status,
        body=body,
        request_id=request_id_of(response.headers, body),
        retry_after=parse_retry_after(response.headers),
    )


def error_from_payload(payload: Mapping[str, Any], headers: httpx.Headers) -> APIError:
    """Build the typed error for an error object sent inside a 200 stream."""
    message = _message(payload, headers) or "the server reported an error mid-stream"
    request_id = request_id_of(headers, payload)
    status = _status_in(payload)
    if status is None:
        return APIError(f"Error in stream: {message}", body=dict(payload), request_id=request_id)
    return status_error_class(status)(
        f"Error in stream (status {status}): {message}", status_code=status, body=dict(payload), request_id=request_id
    )


def request_id_of(headers: httpx.Headers, body: Any = None) -> str | None:
    """The request id a server reports, from headers or the body."""
    for name in _REQUEST_ID_HEADERS:
        if headers.get(name):
            return headers[name]
    if isinstance(body, Mapping):
        for key in ("requestId", "request_id"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from `retry-after-ms`, or `retry-after` as seconds or an HTTP date."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return text


def _message(body: Any, headers: httpx.Headers) -> str | None:
    """Precedence: `error.message` → problem+json `title`/`detail` → top-level `message` → WWW-Authenticate → text."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
        if body.get("detail") or body.get("title"):
            parts = [str(body[key]) for key in ("title", "detail") if body.get(key)]
            return ": ".join(parts)
        if body.get("message"):
            return str(body["message"])
    challenge = headers.get("www-authenticate")
    if challenge:
        return f"authentication failed ({challenge})"
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return None


def _status_in(payload: Mapping[str, Any]) -> int | None:
    error = payload.get("error")
    candidates = [error.get("code"), error.get("status")] if isinstance(error, Mapping) else []
    candidates += [payload.get("code"), payload.get("status")]
    for value in candidates:
        if isinstance(value, int) and 400 <= value < 600:
            return value
        if isinstance(value, str) and value.isdigit() and 400 <= int(value) < 600:
            return int(value)
    return None
