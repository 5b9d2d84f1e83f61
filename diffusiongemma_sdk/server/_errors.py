"""Errors as the OpenAI API shapes them: `{"error": {"message", "type", "param", "code"}}` with a fitting status.

A client's mistake is always a 4xx; a failure of the backend behind the server is a 5xx (502/504 when the backend is
itself a remote server); anything unexpected is a logged 500 whose body says nothing about the server's insides.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from diffusiongemma_sdk._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    GenerationCancelled,
    InvalidRequestError,
    UnsupportedParameterError,
)
from diffusiongemma_sdk._wire.request import wire_parameter

__all__ = [
    "ServerError",
    "error_payload",
    "handle_http_exception",
    "handle_server_error",
    "handle_unexpected",
    "invalid",
    "server_error_from",
    "unsupported",
]

logger = logging.getLogger("diffusiongemma_sdk.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    504: "upstream_error",
}
# Upstream statuses that describe the caller's request, relayed as they are; others say the server is broken.
_RELAYED = frozenset({400, 404, 409, 413, 422, 429})


class ServerError(Exception):
    """An error answer: HTTP status, message, and OpenAI's `type`, `param` and `code`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}
        super().__init__(message)

    def payload(self) -> dict[str, Any]:
        """The JSON body (also sent as an SSE `data:` event when a stream fails after it started)."""
        return error_payload(self.message, error_type=self.error_type, param=self.param, code=self.code)

    def response(self) -> Response:
        return JSONResponse(self.payload(), status_code=self.status, headers=self.headers)


def error_payload(
    message: str, *, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def invalid(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> ServerError:
    """A 400 for a malformed request."""
    return ServerError(400, message, code=code, param=param)


def unsupported(param: str, message: str) -> ServerError:
    """A 400 for a parameter the served backend cannot honour."""
    return ServerError(400, message, code="unsupported_parameter", param=param)


def server_error_from(exc: BaseException) -> ServerError:
    """The error answer for an exception raised while serving a request."""
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, UnsupportedParameterError):
        param = wire_parameter(exc.parameter)
        return unsupported(param, f"The model served here does not support '{param}'; remove it from the request.")
    if isinstance(exc, InvalidRequestError):
        return invalid(str(exc), code=None)
    if isinstance(exc, APIStatusError):
        return _from_upstream_status(exc)
    if isinstance(exc, APITimeoutError):
        return ServerError(504, f"The model's server did not answer in time: {exc.message}", code="upstream_timeout")
    if isinstance(exc, APIConnectionError):
        return ServerError(502, f"The model's server could not be reached: {exc.message}", code="upstream_unreachable")
    if isinstance(exc, APIError):
        return ServerError(502, f"The model's server failed: {exc.message}", code="upstream_error")
    if isinstance(exc, GenerationCancelled):
        return ServerError(503, "The generation was cancelled (the server may be shutting down).", code="cancelled")
    logger.error("Unexpected error while serving a request", exc_info=exc)
    return ServerError(500, "The server failed while handling the request.", code="internal_error")


def _from_upstream_status(exc: APIStatusError) -> ServerError:
    if exc.status_code in _RELAYED:
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(math.ceil(exc.retry_after), 0))
        return ServerError(exc.status_code, exc.message, code="upstream_rejected", headers=headers)
    return ServerError(502, f"The model's server failed: {exc.message}", code="upstream_error")


async def handle_server_error(request: Request, exc: Exception) -> Response:
    return server_error_from(exc).response()


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    target = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        error = ServerError(404, f"No route {target}.", code="unknown_url")
    elif exc.status_code == 405:
        error = ServerError(405, f"Method not allowed: {target}.", code="method_not_allowed")
    else:
        error = ServerError(exc.status_code, str(exc.detail))
    return JSONResponse(error.payload(), status_code=exc.status_code, headers=dict(exc.headers or {}))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    return server_error_from(exc).response()
