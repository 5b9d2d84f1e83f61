"""ASGI middleware: bearer-key authentication and a request-body size limit."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diffusiongemma_sdk.server._errors import ServerError

__all__ = ["BearerAuthMiddleware", "BodyLimitMiddleware", "RequestTooLarge"]


class BearerAuthMiddleware:
    """Refuses HTTP requests without `Authorization: Bearer <key>` (compared in constant time) with a 401.

    Paths in `public_paths` (the health check) need no key. The key is never logged nor echoed.
    """

    def __init__(self, app: ASGIApp, *, api_key: str, public_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self._key = api_key.encode()
        self._public = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._public or self._authorized(Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        error = ServerError(
            401,
            "Missing or wrong API key: send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        presented = token.strip().encode("utf-8", "surrogateescape")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented, self._key)


class RequestTooLarge(ServerError):
    """413: the body is over the server's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"The request body is larger than this server's limit of {limit} bytes.", code="request_too_large"
        )


class BodyLimitMiddleware:
    """Answers 413 to a body over `max_body_bytes`: at once when `Content-Length` says so, else as bytes arrive
    (reading past the limit raises `RequestTooLarge` inside the endpoint, which answers it)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await RequestTooLarge(self.max_body_bytes).response()(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise RequestTooLarge(self.max_body_bytes)
            return message

        await self.app(scope, limited_receive, send)
