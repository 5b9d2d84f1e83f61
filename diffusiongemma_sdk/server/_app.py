"""The Starlette application: OpenAI's chat-completions and models routes over any backend, plus `/health` and
`/openapi.json`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from diffusiongemma_sdk._client import AsyncDiffusionGemma
from diffusiongemma_sdk._wire.fields import model_json
from diffusiongemma_sdk._wire.response import CompletionIdentity, completion_json
from diffusiongemma_sdk.server._defaults import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DENOISING_STEPS_LIMIT,
    DEFAULT_MAX_TOKENS_LIMIT,
)
from diffusiongemma_sdk.server._errors import (
    ServerError,
    handle_http_exception,
    handle_server_error,
    handle_unexpected,
    server_error_from,
)
from diffusiongemma_sdk.server._inbound import RequestLimits, parse_chat_body, parse_json_object, to_chat_call
from diffusiongemma_sdk.server._middleware import BearerAuthMiddleware, BodyLimitMiddleware
from diffusiongemma_sdk.server._openapi import openapi_schema
from diffusiongemma_sdk.server._outbound import sse_chunks
from diffusiongemma_sdk.server._streaming import EventStreamResponse, until_disconnected

__all__ = ["create_app"]

PUBLIC_PATHS = frozenset({"/health", "/openapi.json"})
OWNER = "diffusiongemma-sdk"


def create_app(
    client: AsyncDiffusionGemma,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    model_id: str | None = None,
    owns_client: bool = False,
    max_tokens_limit: int | None = DEFAULT_MAX_TOKENS_LIMIT,
    max_denoising_steps_limit: int | None = DEFAULT_MAX_DENOISING_STEPS_LIMIT,
) -> Starlette:
    """An OpenAI-compatible app serving `client`'s backend as one model.

    `model_id` is the id clients send as `model` (default: the backend's spec string, e.g. `torch:demo`). With
    `api_key`, every route but `/health` and `/openapi.json` needs `Authorization: Bearer <api_key>`. Bodies over
    `max_body_bytes` get a 413; a request asking for more than `max_tokens_limit` tokens or
    `max_denoising_steps_limit` steps per canvas gets a 400 (None: no limit). With `owns_client`, the client is
    closed when the app shuts down.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be at least 1")
    limits = RequestLimits(max_tokens=max_tokens_limit, max_denoising_steps=max_denoising_steps_limit)
    service = _Service(client, model_id or client.backend.name, limits, authenticated=bool(api_key))
    middleware = [Middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)]
    if api_key:
        middleware.insert(0, Middleware(BearerAuthMiddleware, api_key=api_key, public_paths=PUBLIC_PATHS))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owns_client:
                await client.aclose()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", service.chat_completions, methods=["POST"]),
            Route("/v1/models", service.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", service.get_model, methods=["GET"]),
            Route("/health", service.health, methods=["GET"]),
            Route("/openapi.json", service.openapi, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers={
            HTTPException: handle_http_exception,
            ServerError: handle_server_error,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )


class _Service:
    """The route handlers, sharing the client."""

    def __init__(
        self, client: AsyncDiffusionGemma, model_id: str, limits: RequestLimits, *, authenticated: bool
    ) -> None:
        self.client = client
        self.model_id = model_id
        self.limits = limits
        self.authenticated = authenticated
        self.created = int(time.time())

    async def chat_completions(self, request: Request) -> Response:
        try:
            return await self._chat_completions(request)
        except Exception as exc:
            return server_error_from(exc).response()

    async def _chat_completions(self, request: Request) -> Response:
        body = parse_chat_body(parse_json_object(await request.body()))
        if body.model != self.model_id:
            raise ServerError(
                404,
                f"The model {body.model!r} does not exist here; this server serves {self.model_id!r}.",
                code="model_not_found",
                param="model",
            )
        call = to_chat_call(body, self.limits)
        identity = CompletionIdentity(model=self.model_id)
        if call.stream:  # the client checks the request against the backend, as for any caller
            stream = self.client.send_stream(call.request)
            chunks = sse_chunks(
                stream, identity, include_usage=call.include_usage, single_tool_call=call.single_tool_call
            )
            return EventStreamResponse(chunks)
        generation = await until_disconnected(request.receive, lambda: self.client.send(call.request))
        if generation is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        return JSONResponse(completion_json(generation, identity, single_tool_call=call.single_tool_call))

    async def list_models(self, request: Request) -> Response:
        try:
            entry = model_json(self.model_id, self.created, OWNER, await self.client.discover_capabilities())
        except Exception as exc:
            return server_error_from(exc).response()
        return JSONResponse({"object": "list", "data": [entry]})

    async def get_model(self, request: Request) -> Response:
        if request.path_params["model"] != self.model_id:
            error = ServerError(
                404, f"The model {request.path_params['model']!r} does not exist here.", code="model_not_found"
            )
            return error.response()
        try:
            entry = model_json(self.model_id, self.created, OWNER, await self.client.discover_capabilities())
        except Exception as exc:
            return server_error_from(exc).response()
        return JSONResponse(entry)

    async def health(self, request: Request) -> Response:
        body: dict[str, Any] = {"status": "ok", "model": self.model_id}
        return JSONResponse(body)

    async def openapi(self, request: Request) -> Response:
        try:
            capabilities = await self.client.discover_capabilities()
        except Exception as exc:
            return server_error_from(exc).response()
        schema = openapi_schema(
            self.model_id,
            self.limits,
            capabilities,
            refuses_unsupported=self.client.unsupported == "error",
            authenticated=self.authenticated,
        )
        return JSONResponse(schema)
