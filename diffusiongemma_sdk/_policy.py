"""The unsupported-parameter policy: a feature a backend lacks is refused, or warned about and dropped."""

from __future__ import annotations

import warnings
from typing import Literal

from diffusiongemma_sdk._backend import Capabilities, GenerationRequest
from diffusiongemma_sdk._errors import UnsupportedParameterError
from diffusiongemma_sdk._types import Message, TextPart

__all__ = ["UnsupportedParameterWarning", "UnsupportedPolicy", "apply_policy"]

UnsupportedPolicy = Literal["error", "warn", "drop"]


class UnsupportedParameterWarning(UserWarning):
    """A parameter the backend does not support was dropped from a request."""


def apply_policy(
    request: GenerationRequest, capabilities: Capabilities, *, backend: str, policy: UnsupportedPolicy
) -> GenerationRequest:
    """Return the request as the backend may receive it; raise, warn or drop for each unsupported feature."""
    changes: dict[str, object] = {}
    if request.diffusion is not None and not request.diffusion.is_empty() and not capabilities.per_request_diffusion:
        _refuse(backend, "diffusion", "it applies its server-side diffusion settings to every request", policy)
        changes["diffusion"] = None
    if request.tools and not capabilities.tools:
        _refuse(backend, "tools", "", policy)
        changes.update(tools=[], tool_choice=None)
    if request.thinking is not None and not capabilities.thinking:
        _refuse(backend, "thinking", "", policy)
        changes["thinking"] = None
    if request.seed is not None and not capabilities.seed:
        _refuse(backend, "seed", "", policy)
        changes["seed"] = None
    if not capabilities.images and any(message.images for message in request.messages):
        _refuse(backend, "images", "this backend reads text only", policy)
        changes["messages"] = [_without_images(message) for message in request.messages]
    return request.model_copy(update=changes) if changes else request


def _refuse(backend: str, parameter: str, detail: str, policy: UnsupportedPolicy) -> None:
    error = UnsupportedParameterError(backend, parameter, detail)
    if policy == "error":
        raise error
    if policy == "warn":
        warnings.warn(
            f"Backend '{backend}' does not support '{parameter}'; it was dropped from the request.",
            UnsupportedParameterWarning,
            stacklevel=4,
        )


def _without_images(message: Message) -> Message:
    if isinstance(message.content, str):
        return message
    return message.model_copy(update={"content": [p for p in message.content if isinstance(p, TextPart)]})
