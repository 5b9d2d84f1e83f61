"""Denoise drafts out of a chat model's stream: custom events of its own run (`astream_events`, callbacks) and, inside
a LangGraph graph, its `stream_mode="custom"` stream. They never enter the message content."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)

from diffusiongemma_sdk import DenoiseStepEvent

__all__ = ["DRAFT_EVENT", "DraftSink"]

DRAFT_EVENT = "diffusiongemma.denoise_step"
"""The name of the custom event a denoise draft is dispatched as."""


class DraftSink:
    """Where one run's drafts go: its callbacks, as custom events of the chat model's run, and the LangGraph stream
    writer of the node the model runs in (found when the sink is made, in the caller's context)."""

    def __init__(self) -> None:
        self._writer = _langgraph_writer()

    async def asend(self, event: DenoiseStepEvent, run_manager: AsyncCallbackManagerForLLMRun | None) -> None:
        data = draft_data(event)
        if run_manager is not None:
            manager = AsyncCallbackManager(**_run_manager_fields(run_manager))
            await manager.on_custom_event(DRAFT_EVENT, data, run_id=run_manager.run_id)
        if self._writer is not None:
            self._writer({"event": DRAFT_EVENT, **data})

    def send(self, event: DenoiseStepEvent, run_manager: CallbackManagerForLLMRun | None) -> None:
        data = draft_data(event)
        if run_manager is not None:
            CallbackManager(**_run_manager_fields(run_manager)).on_custom_event(
                DRAFT_EVENT, data, run_id=run_manager.run_id
            )
        if self._writer is not None:
            self._writer({"event": DRAFT_EVENT, **data})


def draft_data(event: DenoiseStepEvent) -> dict[str, Any]:
    """The event's payload: canvas, step, draft text, accepted fraction and mean entropy."""
    return {
        "canvas": event.canvas_index,
        "step": event.step,
        "draft_text": event.draft_text,
        "accepted_fraction": event.accepted_fraction,
        "mean_entropy": event.mean_entropy,
    }


def _run_manager_fields(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun) -> dict[str, Any]:
    """A callback manager that dispatches as the chat model's own run (custom events then carry its run id)."""
    return {
        "handlers": run_manager.handlers,
        "inheritable_handlers": run_manager.inheritable_handlers,
        "parent_run_id": run_manager.parent_run_id,
        "tags": run_manager.tags,
        "inheritable_tags": run_manager.inheritable_tags,
        "metadata": run_manager.metadata,
        "inheritable_metadata": run_manager.inheritable_metadata,
    }


def _langgraph_writer() -> Callable[[Any], None] | None:
    """The custom-stream writer of the LangGraph node this runs in; None outside a graph or without LangGraph."""
    try:
        from langgraph.config import get_stream_writer
    except ImportError:
        return None
    try:
        return get_stream_writer()
    except (RuntimeError, KeyError):  # not inside a graph's node
        return None
