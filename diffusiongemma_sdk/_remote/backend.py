"""The remote backend: hosted NIM or any OpenAI-compatible server, over httpx."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import httpx
from pydantic import SecretStr, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from diffusiongemma_sdk._backend import Backend, Capabilities, GenerationRequest, ModelInfo
from diffusiongemma_sdk._errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
)
from diffusiongemma_sdk._remote.errors import error_from_payload, error_from_response
from diffusiongemma_sdk._remote.limits import RequestRateLimiter
from diffusiongemma_sdk._remote.pool import ShardedClient
from diffusiongemma_sdk._remote.sse import SSEComment, iter_sse_items
from diffusiongemma_sdk._remote.wire import StreamAssembler, build_body, generation_from_response, parse_draft_comment
from diffusiongemma_sdk._types import DoneEvent, Generation, StreamEvent, ToolCallEvent, UsageEvent
from diffusiongemma_sdk._version import __version__

__all__ = ["RemoteBackend"]

logger = logging.getLogger("diffusiongemma_sdk.remote")

CONNECT_TIMEOUT = 5.0
STREAM_IDLE_TIMEOUT = 90.0  # no byte for this long ends a stream; canvases arrive ~1 s apart, queues add more
MAX_RETRY_AFTER = 60.0
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
_RETRY_STATUSES = frozenset({408, 409, 429})
_TRANSIENT_400 = "DEGRADED function"


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
        async with self._lease() as client:
            body = await self._request_json(
                client, "GET", "/models", None, timeout=self._timeout, max_retries=self._max_retries
            )
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
                    self._adopt((listed[0].model_extra or {}).get("capabilities"))
                    self._discovered = True
        return self._model

    def _adopt(self, advertised: Any) -> None:
        if not isinstance(advertised, Mapping):
            return
        try:
            capabilities = Capabilities.model_validate(advertised)
        except ValidationError:
            logger.info("%s/models advertises capabilities this SDK cannot read; ignoring them", self.base_url)
            return
        self.advertised = capabilities
        limit = self._max_concurrency if self._max_concurrency is not None else capabilities.max_concurrency
        self._capabilities = capabilities.model_copy(update={"max_concurrency": limit})

    async def generate(self, request: GenerationRequest) -> Generation:
        timeout = request.timeout or self._timeout
        try:
            with anyio.fail_after(timeout):
                body = self._body(request, model=await self.model_id(), stream=False)
                async with self._lease() as client:
                    data = await self._request_json(
                        client, "POST", "/chat/completions", body, timeout=timeout, max_retries=self._retries(request)
                    )
        except TimeoutError:
            raise APITimeoutError(f"No answer from {self.base_url} within {timeout:g} s (timeout=...).") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("choices"), list):
            raise APIResponseValidationError("The server's answer has no 'choices' list", body=data)
        return generation_from_response(data, backend=self.name)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        timeout = request.timeout or self._timeout
        deadline = anyio.current_time() + timeout
        body = self._body(request, model=await self.model_id(), stream=True)
        async with self._lease() as client, aclosing(self._events(client, body, request, deadline, timeout)) as events:
            async for event in events:
                yield event

    async def _events(
        self,
        client: httpx.AsyncClient,
        body: dict[str, Any],
        request: GenerationRequest,
        deadline: float,
        timeout: float,
    ) -> AsyncGenerator[StreamEvent, None]:
        response = await self._send(
            client, "POST", "/chat/completions", body, stream=True, max_retries=self._retries(request)
        )
        assembler = StreamAssembler(backend=self.name)
        drafts = bool(body.get("diffusing"))
        try:
            async for payload in iter_sse_items(response):
                if isinstance(payload, SSEComment):
                    draft = parse_draft_comment(payload.text) if drafts else None
                    if draft is not None:
                        yield draft
                    continue
                if ("error" in payload and "choices" not in payload) or payload.get("object") == "error":
                    raise error_from_payload(payload, response.headers)
                for event in assembler.feed(payload):
                    yield event
                if anyio.current_time() > deadline:
                    raise APITimeoutError(f"The stream from {self.base_url} ran past its {timeout:g} s timeout.")
            for event in assembler.close():
                yield event
        except APIError as exc:
            exc.partial = assembler.partial()
            raise
        except httpx.TimeoutException:
            raise APITimeoutError(
                f"The stream from {self.base_url} sent nothing for {self._stream_idle_timeout:g} s.",
                partial=assembler.partial(),
            ) from None
        except httpx.TransportError as exc:
            raise APIConnectionError(
                f"The stream from {self.base_url} broke off: {exc}", partial=assembler.partial()
            ) from None
        finally:
            await response.aclose()
        generation = assembler.finish()
        for call in generation.tool_calls:
            yield ToolCallEvent(tool_call=call)
        yield UsageEvent(usage=generation.usage)
        yield DoneEvent(generation=generation)

    def _body(self, request: GenerationRequest, *, model: str, stream: bool) -> dict[str, Any]:
        body = build_body(request, model=model, stream=stream, drafts=self._capabilities.denoise_stream)
        if request.response_schema is not None and self._capabilities.native_structured_output:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": request.response_schema},
            }
        return body

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

    def _retries(self, request: GenerationRequest) -> int:
        return self._max_retries if request.max_retries is None else request.max_retries

    async def _request_json(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        timeout: float,
        max_retries: int,
    ) -> Any:
        response = await self._send(client, method, path, body, stream=False, max_retries=max_retries, timeout=timeout)
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
        max_retries: int,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send with retries; return a response with a success status (unread when streaming)."""
        read_timeout = self._stream_idle_timeout if stream else (timeout or self._timeout)
        request = client.build_request(
            method,
            self.base_url + path,
            json=body,
            headers=self._headers(stream=stream),
            timeout=httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT),
        )
        retrying = AsyncRetrying(
            stop=stop_after_attempt(max_retries + 1),
            wait=_retry_delay,
            retry=retry_if_exception(_should_retry),
            sleep=anyio.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send_once(client, request, stream=stream)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _send_once(self, client: httpx.AsyncClient, request: httpx.Request, *, stream: bool) -> httpx.Response:
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


def _should_retry(exc: BaseException) -> bool:
    if isinstance(exc, APIConnectionError):
        return True
    if not isinstance(exc, APIStatusError):
        return False
    if exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER:
        return False  # "try again in 5 hours" is no job for a retry loop
    if exc.status_code == 400:
        return _TRANSIENT_400 in exc.message
    return exc.status_code in _RETRY_STATUSES or exc.status_code >= 500


def _retry_delay(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, APIStatusError) and exc.retry_after is not None:
        return min(float(exc.retry_after), MAX_RETRY_AFTER)
    backoff = min(INITIAL_RETRY_DELAY * 2.0 ** (state.attempt_number - 1), MAX_RETRY_DELAY)
    return backoff * (1 - 0.25 * random.random())


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    logger.info("Retrying after %s (attempt %d, waiting %.2f s)", type(exc).__name__, state.attempt_number, delay)
