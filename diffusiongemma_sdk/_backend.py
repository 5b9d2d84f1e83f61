"""The backend contract: what every backend (remote server, local engine, GGUF build) implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from diffusiongemma_sdk._tools import Tool
from diffusiongemma_sdk._types import DiffusionParams, Generation, Message, StreamEvent

__all__ = ["Backend", "BackendOptions", "Capabilities", "GenerationRequest", "ModelInfo"]

DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_RETRIES = 2


class Capabilities(BaseModel):
    """What a backend supports. Requests using anything else go through the client's `unsupported` policy."""

    model_config = ConfigDict(frozen=True)

    per_request_diffusion: bool = Field(description="Honours DiffusionParams per request.")
    denoise_stream: bool = Field(description="Streams `denoise_step` events with canvas drafts.")
    tools: bool = True
    images: bool = False
    thinking: bool = True
    native_structured_output: bool = False
    logprobs: bool = False
    seed: bool = True
    max_concurrency: int | None = Field(default=None, description="Requests served at once; None if unknown.")


class GenerationRequest(BaseModel):
    """One normalized request, as a backend receives it."""

    model_config = ConfigDict(frozen=True)

    messages: list[Message]
    max_tokens: int | None = Field(default=None, ge=1)
    thinking: bool | None = None
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: str | None = None
    diffusion: DiffusionParams | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    response_schema: dict[str, Any] | None = Field(
        default=None, description="JSON schema the answer must match; sent only to backends with native support."
    )
    timeout: float | None = Field(default=None, gt=0, description="Per-call override of the client's timeout.")
    max_retries: int | None = Field(default=None, ge=0, description="Per-call override of the client's retries.")


class BackendOptions(BaseModel):
    """Client-level settings handed to a backend factory."""

    model_config = ConfigDict(frozen=True)

    api_key: SecretStr | None = None
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0)
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options.")


class ModelInfo(BaseModel):
    """A model a backend can serve."""

    model_config = ConfigDict(extra="allow")

    id: str
    owned_by: str | None = None


class Backend(abc.ABC):
    """A place where DiffusionGemma runs.

    `stream` is an async generator of events ending with a `DoneEvent`; closing it early (or cancelling the task
    iterating it) must stop the backend's work and release what it holds.
    """

    #: The spec string that names this backend, e.g. ``"nim:google/diffusiongemma-26b-a4b-it"``.
    name: str

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """What this backend supports."""

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> Generation:
        """Run one request to completion."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Run one request, yielding events as they happen; the last one is a `DoneEvent`."""

    @property
    def capabilities_known(self) -> bool:
        """False while `capabilities` may still change once the backend has asked (an `openai:` server that
        advertises what it supports); the client then awaits `discover_capabilities()` before checking a request."""
        return True

    async def discover_capabilities(self) -> Capabilities:
        """Learn what the backend supports where that takes I/O (done once), and return `capabilities`."""
        return self.capabilities

    async def models(self) -> list[ModelInfo]:
        """The models this backend serves."""
        return [ModelInfo(id=self.name)]

    async def aclose(self) -> None:  # noqa: B027  (optional hook: most backends hold nothing)
        """Release connections, threads and memory."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
