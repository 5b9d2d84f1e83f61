"""Public data types: messages, tools, diffusion settings, generations and stream events."""

from __future__ import annotations

import base64
import mimetypes
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CanvasEvent",
    "ContentPart",
    "DenoiseStepEvent",
    "DiffusionParams",
    "DoneEvent",
    "FinishReason",
    "Generation",
    "ImagePart",
    "Message",
    "ReasoningEvent",
    "Role",
    "StreamEvent",
    "TextPart",
    "ToolCall",
    "ToolCallEvent",
    "Usage",
    "UsageEvent",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


class TextPart(BaseModel):
    """A piece of text inside a message."""

    model_config = ConfigDict(frozen=True)

    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """An image inside a user message, as an http(s) URL or a `data:` URI."""

    model_config = ConfigDict(frozen=True)

    type: Literal["image"] = "image"
    url: str

    @classmethod
    def from_path(cls, path: str | Path) -> ImagePart:
        """Read a local image file into a base64 `data:` URI."""
        file = Path(path)
        mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        encoded = base64.b64encode(file.read_bytes()).decode("ascii")
        return cls(url=f"data:{mime};base64,{encoded}")


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ToolCall(BaseModel):
    """A call of a tool requested by the model."""

    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw_arguments: str | None = Field(
        default=None, description="The arguments as sent by the model, kept only when they were not valid JSON."
    )


class Message(BaseModel):
    """One chat turn. `content` is a string or a list of text and image parts."""

    role: Role
    content: str | list[ContentPart] = ""
    name: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    reasoning: str | None = None

    @model_validator(mode="after")
    def _check_role_fields(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only 'assistant' messages carry 'tool_calls'")
        if self.role != "user" and self.images:
            raise ValueError("images are only allowed in 'user' messages")
        return self

    @property
    def text(self) -> str:
        """The message's text, with image parts left out."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        """The message's image parts."""
        if isinstance(self.content, str):
            return []
        return [part for part in self.content if isinstance(part, ImagePart)]


class DiffusionParams(BaseModel):
    """Per-request settings of the block-diffusion sampler. Unset fields take the checkpoint's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_denoising_steps: int | None = Field(default=None, ge=1, description="Cap on denoising steps per canvas.")
    entropy_bound: float | None = Field(default=None, gt=0, description="Entropy budget (nats) accepted per step.")
    t_min: float | None = Field(default=None, ge=0, description="Sampling temperature at the last step.")
    t_max: float | None = Field(default=None, gt=0, description="Sampling temperature at the first step.")
    confidence_threshold: float | None = Field(
        default=None, gt=0, description="Early stop when the canvas's mean entropy falls below this."
    )
    stability_threshold: int | None = Field(
        default=None, ge=0, description="Early stop needs the argmax canvas unchanged for this many steps."
    )
    sampler: Literal["default", "reference"] | None = Field(
        default=None,
        description="'reference' draws random numbers exactly like transformers' generate(); 'default' may be faster.",
    )

    @model_validator(mode="after")
    def _check_temperatures(self) -> DiffusionParams:
        if self.t_min is not None and self.t_max is not None and not self.t_max > self.t_min:
            raise ValueError(f"t_max ({self.t_max}) must be greater than t_min ({self.t_min})")
        return self

    def is_empty(self) -> bool:
        """True when no field is set, so the backend's defaults apply throughout."""
        return all(getattr(self, name) is None for name in type(self).model_fields)


class Usage(BaseModel):
    """Token counts and, where the backend knows them, diffusion statistics."""

    def __add__(self, other: Usage) -> Usage:
        """Usage of two generations together (rates such as tokens_per_forward are not summed)."""

        def total(a: float | None, b: float | None) -> Any:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            canvases=total(self.canvases, other.canvases),
            denoising_steps=total(self.denoising_steps, other.denoising_steps),
            wall_s=total(self.wall_s, other.wall_s),
        )

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    canvases: int | None = None
    denoising_steps: int | None = None
    tokens_per_forward: float | None = None
    ttft_s: float | None = None
    wall_s: float | None = None


class Generation(BaseModel):
    """The result of one generation."""

    text: str = ""
    reasoning: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    backend: str = ""
    model: str | None = None
    id: str | None = None
    parsed: Any = Field(default=None, description="The validated `response_model` instance, when one was asked for.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Response fields the SDK does not model, kept as the server sent them."
    )

    def to_message(self) -> Message:
        """This generation as an assistant message, ready to append to a conversation."""
        return Message(role="assistant", content=self.text, tool_calls=self.tool_calls, reasoning=self.reasoning)


class DenoiseStepEvent(BaseModel):
    """One denoising step of a canvas (local backends only)."""

    type: Literal["denoise_step"] = "denoise_step"
    canvas_index: int
    step: int
    draft_text: str
    accepted_fraction: float
    mean_entropy: float


class CanvasEvent(BaseModel):
    """Committed answer text: a canvas, or the text a server sent in one chunk."""

    type: Literal["canvas"] = "canvas"
    canvas_index: int
    text_delta: str
    steps: int | None = None


class ReasoningEvent(BaseModel):
    """New text of the model's thought channel."""

    type: Literal["reasoning"] = "reasoning"
    text_delta: str


class ToolCallEvent(BaseModel):
    """A complete tool call."""

    type: Literal["tool_call"] = "tool_call"
    tool_call: ToolCall


class UsageEvent(BaseModel):
    """Final token counts of the generation."""

    type: Literal["usage"] = "usage"
    usage: Usage


class DoneEvent(BaseModel):
    """The last event of a stream, holding the whole generation."""

    type: Literal["done"] = "done"
    generation: Generation


StreamEvent = Annotated[
    DenoiseStepEvent | CanvasEvent | ReasoningEvent | ToolCallEvent | UsageEvent | DoneEvent,
    Field(discriminator="type"),
]
