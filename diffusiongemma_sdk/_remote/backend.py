"""The remote backend: hosted NIM or any OpenAI-compatible server, over httpx."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import httpx
from pydantic import SecretStr

from diffusiongemma_sdk._backend import Backend, Capabilities, GenerationRequest, ModelInfo
from diffusiongemma_sdk._errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    ConfigurationError,
)
from diffusiongemma_sdk._remote.errors import error_from_payload, error_from_response
from diffusiongemma_sdk._remote.limits import RequestRateLimiter
from diffusiongemma_sdk._remote.pool import ShardedClient
from diffusiongemma_sdk._retry import retrying
from diffusiongemma_sdk._types import Generation, StreamEvent
from diffusiongemma_sdk._version import __version__
from diffusiongemma_sdk._wire.decoder import ChunkDecoder, generation_from_completion
from diffusiongemma_sdk._wire.fields import capabilities_from_model, parse_draft_comment
from diffusiongemma_sdk._wire.request import request_json
from diffusiongemma_sdk._wire.sse import SSEComment, iter_sse_items

__all__ = ["RemoteBackend"]

logger = logging.getLogger("diffusiongemma_sdk.remote")

CONNECT_TIMEOUT = 5.0
STREAM_IDLE_TIMEOUT = 90.0  # no byte for this long ends a stream; canvases arrive ~1 s apart, queues add more


class RemoteBackend(Backend):
    """A backend that talks to `POST {base_url}/chat/completions`.

    With no `model`, the first model the server lists at `GET {base_url}/models` is used (fetched lazily, once).
    With `discover` too, that entry's `capabilities` object (what `diffusiongemma serve` advertises) replaces
    `capabilities`, so per-request diffusion settings, thinking and denoise drafts are used as the server declares;
    a server that advertises nothing keeps `capabilities`. A named `model` means no `GET /models`, so no discovery.
    """

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        model: str | None,
        api_key: SecretStr | None,
        capabilities: Capabilities,
        timeout: float,
        max_retries: int,
        stream_idle_timeout: float = STREAM_IDLE_TIMEOUT,
        requests_per_minute: int | None = None,
        max_concurrency: int | None = None,
        discover: bool = False,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._model = model
        self._api_key = api_key
        self._capabilities = capabilities.model_copy(update={"max_concurrency": max_concurrency})
        self._max_concurrency = max_concurrency
        self._discovered = not (discover and model is None)
        #: The capabilities the server advertised for the model, once read; None if it advertised none.
        self.advertised: Capabilities | None = None
        self._timeout = timeout
        self._max_retries = max_retries
        self._stream_idle_timeout = stream_idle_timeout
        self._http = ShardedClient(timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT))
        self._model_lock = anyio.Lock()
        self._rate_limiter = RequestRateLimiter(requests_per_minute) if requests_per_minute else None
        self._in_flight = anyio.CapacityLimiter(max_concurrency) if max_concurrency else None

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def capabilities_known(self) -> bool:
        return self._discovered

    async def discover_capabilities(self) -> Capabilities:
        if not self._discovered:
            await self.model_id()
        return self._capabilities

    @property
    def requests_per_minute(self) -> int | None:
        """The client-side rate limit, or None when off."""
        return None if self._rate_limiter is None else self._rate_limiter.limit

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> list[ModelInfo]:
        async def list_models() -> Any:
            async with self._lease() as client:
                return self._json(await self._send(client, "GET", "/models", None, stream=False))

        body = await retrying(list_models, self._max_retries)
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, list):
            raise APIResponseValidationError(f"GET {self.base_url}/models did not return a model list", body=body)
        return [ModelInfo.model_validate(item) for item in data if isinstance(item, Mapping) and "id" in item]

    async def model_id(self) -> str:
        """The model id sent with each request (the first listed model when none was named)."""
        async with self._model_lock:
            if self._model is None:
                listed = await self.models()
                if not listed:
                    raise ConfigurationError(
                        f"The server at {self.base_url} lists no models; name one in the spec: openai:<url>#<model>"
                    )
                self._model = listed[0].id
                if not self._discovered:
                    self._adopt(listed[0].model_dump())
                    self._discovered = True
        return self._model

    def _adopt(self, entry: Mapping[str, Any]) -> None:
        capabilities = capabilities_from_model(entry)
        if capabilities is None:
            if "capabilities" in entry:
                logger.info("%s/models advertises capabilities this SDK cannot read; ignoring them", self.base_url)
            return
        self.advertised = capabilities
        limit = self._max_concurrency if self._max_concurrency is not None else capabilities.max_concurrency
        self._capabilities = capabilities.model_copy(update={"max_concurrency": limit})

    async def generate(self, request: GenerationRequest) -> Generation:
        body = request_json(request, model=await self.model_id(), stream=False)
        async with self._lease() as client:
            response = await self._send(
                client, "POST", "/chat/completions", body, stream=False, timeout=request.timeout
            )
            data = self._json(response)
        if not isinstance(data, Mapping) or not isinstance(data.get("choices"), list):
            raise APIResponseValidationError("The server's answer has no 'choices' list", body=data)
        return generation_from_completion(data, backend=self.name)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        body = request_json(request, model=await self.model_id(), stream=True)
        async with self._lease() as client, aclosing(self._events(client, body, drafts=request.drafts)) as events:
            async for event in events:
                yield event

    async def _events(
        self, client: httpx.AsyncClient, body: dict[str, Any], *, drafts: bool
    ) -> AsyncGenerator[StreamEvent, None]:
        response = await self._send(client, "POST", "/chat/completions", body, stream=True)
        decoder = ChunkDecoder(self.name)
        try:
            async for payload in iter_sse_items(response.aiter_lines()):
                if isinstance(payload, SSEComment):
                    draft = parse_draft_comment(payload.text) if drafts else None
                    if draft is not None:
                        yield draft
                    continue
                if ("error" in payload and "choices" not in payload) or payload.get("object") == "error":
                    raise error_from_payload(payload, response.headers)
                for event in decoder.feed(payload):
                    yield event
        except APIError as exc:
            exc.partial = decoder.partial()
            raise
        except httpx.TimeoutException:
            raise APITimeoutError(
                f"The stream from {self.base_url} sent nothing for {self._stream_idle_timeout:g} s.",
                partial=decoder.partial(),
            ) from None
        except httpx.TransportError as exc:
            raise APIConnectionError(
                f"The stream from {self.base_url} broke off: {exc}", partial=decoder.partial()
            ) from None
        finally:
            with anyio.CancelScope(shield=True):  # a deadline or a cancellation still closes the connection
                await response.aclose()
        for event in decoder.finish():
            yield event

    @asynccontextmanager
    async def _lease(self) -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client for one whole request (stream included), within the `max_concurrency` limit."""
        if self._in_flight is None:
            async with self._http.lease() as client:
                yield client
            return
        token = object()  # not the task: a stream may be closed from another task
        await self._in_flight.acquire_on_behalf_of(token)
        try:
            async with self._http.lease() as client:
                yield client
        finally:
            self._in_flight.release_on_behalf_of(token)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise APIResponseValidationError(
                f"The server's answer is not valid JSON: {response.text[:200]!r}", body=response.text
            ) from None

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        stream: bool,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send once; return a response with a success status (unread when streaming). Retries are the caller's."""
        read_timeout = self._stream_idle_timeout if stream else (timeout or self._timeout)
        request = client.build_request(
            method,
            self.base_url + path,
            json=body,
            headers=self._headers(stream=stream),
            timeout=httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT),
        )
        if self._rate_limiter is not None:
            await self._rate_limiter.acquire()
        try:
            response = await client.send(request, stream=stream)
        except httpx.TimeoutException:
            raise APITimeoutError(f"Timed out waiting for {request.url.host} to answer.") from None
        except httpx.TransportError as exc:
            raise APIConnectionError(f"Could not reach {request.url.host}: {exc or type(exc).__name__}") from None
        if response.is_success:
            return response
        try:
            text = (await response.aread()).decode("utf-8", "replace")
        except httpx.TransportError:
            text = ""
        finally:
            await response.aclose()
        raise error_from_response(response, text)

    def _headers(self, *, stream: bool) -> dict[str, str]:
        headers = {
            "User-Agent": f"diffusiongemma-sdk/{__version__}",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers
