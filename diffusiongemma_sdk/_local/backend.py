"""What the local engines' backends share: the `Backend` methods every local engine implements alike, and the
reading of a factory's `backend_options` into the engine's own settings model."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from diffusiongemma_sdk._backend import Backend, BackendOptions, Capabilities, GenerationRequest
from diffusiongemma_sdk._errors import ConfigurationError, describe_validation_error
from diffusiongemma_sdk._types import DoneEvent, Generation, StreamEvent

__all__ = ["LocalBackend", "engine_options"]

Options = TypeVar("Options", bound=BaseModel)


def engine_options(model: type[Options], options: BackendOptions, scheme: str) -> Options:
    """`options.extra` read as `model`; a `ConfigurationError` that names the known options otherwise."""
    try:
        return model.model_validate(options.extra)
    except ValidationError as exc:
        raise ConfigurationError(
            f"Invalid backend_options for {scheme}: ({describe_validation_error(exc)}). "
            f"Known options: {', '.join(model.model_fields)}."
        ) from None


class LocalBackend(Backend):
    """A backend whose engine runs in this process: `_events(request)` yields a request's events, ending with its
    `DoneEvent`; `generate` is a stream without drafts."""

    _capabilities: Capabilities

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def generate(self, request: GenerationRequest) -> Generation:
        async with aclosing(self._events(request.model_copy(update={"drafts": False}))) as events:
            async for event in events:
                if isinstance(event, DoneEvent):
                    return event.generation
        raise RuntimeError("the engine ended without a result")  # pragma: no cover

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        async with aclosing(self._events(request)) as events:
            async for event in events:
                yield event

    @abc.abstractmethod
    def _events(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        """The request's events; closing the generator stops the engine's work."""
