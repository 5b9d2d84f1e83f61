"""langchain-diffusiongemma: LangChain's chat model for DiffusionGemma on any diffusiongemma-sdk backend.

    from langchain_diffusiongemma import ChatDiffusionGemma

    model = ChatDiffusionGemma("torch:demo")          # or "nim", "openai:http://host:8000/v1", "gguf:model.gguf"
    model.invoke("Sort these numbers: 17 4 9").content

`self_consistency` votes over seeded samples generated together; `EffortEscalationMiddleware` (needs `langchain`)
re-asks an agent's model with more effort when an answer fails a check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_diffusiongemma._chat_model import ChatDiffusionGemma
from langchain_diffusiongemma._consistency import self_consistency
from langchain_diffusiongemma._drafts import DRAFT_EVENT
from langchain_diffusiongemma._effort import EFFORT_LEVELS, EFFORT_SETTINGS, Effort

if TYPE_CHECKING:
    from langchain_diffusiongemma._middleware import EffortEscalationMiddleware

__all__ = [
    "DRAFT_EVENT",
    "EFFORT_LEVELS",
    "EFFORT_SETTINGS",
    "ChatDiffusionGemma",
    "Effort",
    "EffortEscalationMiddleware",
    "self_consistency",
]


def __getattr__(name: str) -> Any:
    """`EffortEscalationMiddleware`, imported on first use because it needs `langchain` (the `agents` extra)."""
    if name != "EffortEscalationMiddleware":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from langchain_diffusiongemma._middleware import EffortEscalationMiddleware
    except ImportError as exc:
        raise ImportError(
            f"EffortEscalationMiddleware needs langchain: pip install 'langchain-diffusiongemma[agents]' ({exc})"
        ) from None
    return EffortEscalationMiddleware
