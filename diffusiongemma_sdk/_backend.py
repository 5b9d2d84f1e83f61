"""The backend contract: what every backend (remote server, local engine, GGUF build) implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from diffusiongemma_sdk._tools import Tool
from diffusiongemma_sdk._types import DiffusionParams, Generation, Message, StreamEvent

__all__ = [
    "TOOL_CHOICE_KEYWORDS",
    "Backend",
    "BackendOptions",
    "Capabilities",
    "GenerationRequest",
    "ModelInfo",
    "ToolChoiceForm",
    "tool_choice_form",
]

DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_RETRIES = 2

ToolChoiceForm = Literal["auto", "none", "required", "named"]
"""The forms of `tool_choice`: the three keywords, and the name of one tool ("named")."""
TOOL_CHOICE_KEYWORDS = ("auto", "none", "required")


class Capabilities(BaseModel):
    """What a backend supports. Requests using anything else go through the client's `unsupported` policy."""

    model_config = ConfigDict(frozen=True)

    per_request_diffusion: bool = Field(description="Honours DiffusionParams per request.")
    denoise_stream: bool = Field(description="Streams `denoise_step` events with canvas drafts.")
    tools: bool = True
    tool_choice: tuple[ToolChoiceForm, ...] = Field(
        default=("auto", "none", "required", "named"),
        description="The tool_choice forms honoured: 'none' never calls, 'required' and a name always call.",
    )
    images: bool = False
    thinking: bool = True
    native_structured_output: bool = False
    logprobs: bool = False
    seed: bool = True
    stop: bool = Field(default=True, description="Ends the answer at the first stop string.")
    max_concurrency: int | None = Field(default=None, description="Requests served at once; None if unknown.")
    context_window: int | None = Field(
        default=None, description="Tokens of context a request may use (prompt and answer); None if unknown."
    )


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
    drafts: bool = Field(default=False, description="Stream a `denoise_step` event with each step's draft.")
    timeout: float | None = Field(
        default=None, gt=0, description="Deadline of the whole call in seconds; None: the client's timeout."
    )
    max_retries: int | None = Field(
        default=None, ge=0, description="Retries of transient failures; None: the client's max_retries."
    )

    @field_validator("tool_choice")
    @classmethod
    def _check_tool_choice(cls, choice: str | None, info: ValidationInfo) -> str | None:
        if choice is None or choice in ("auto", "none"):
            return choice
        names = [tool.name for tool in info.data.get("tools", [])]
        if not names:
            raise ValueError(f"tool_choice {choice!r} needs tools to call; pass them in tools=")
        if choice != "required" and choice not in names:
            raise ValueError(
                f"tool_choice {choice!r} is not 'auto', 'none', 'required' or the name of one of the tools "
                f"({', '.join(names)})"
            )
        return choice


def tool_choice_form(choice: str | None) -> ToolChoiceForm | None:
    """Which form a `tool_choice` value takes (None stays None: the backend's default, which is 'auto')."""
    if choice is None:
        return None
    return choice if choice in ("auto", "none", "required") else "named"  # type: ignore[return-value]


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
