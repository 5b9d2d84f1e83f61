"""The effort dial: named diffusion settings, from a few steps per canvas to many careful ones."""

from __future__ import annotations

from typing import Literal

from diffusiongemma_sdk import DiffusionParams

__all__ = ["EFFORT_LEVELS", "EFFORT_SETTINGS", "Effort", "diffusion_for", "more_effort"]

Effort = Literal["instant", "low", "medium", "high"]
EFFORT_LEVELS: tuple[Effort, ...] = ("instant", "low", "medium", "high")

EFFORT_SETTINGS: dict[Effort, DiffusionParams] = {
    # a handful of steps, many tokens accepted in each: fastest, roughest
    "instant": DiffusionParams(max_denoising_steps=4, entropy_bound=2.0),
    "low": DiffusionParams(max_denoising_steps=12, entropy_bound=0.5),
    # the checkpoint's own defaults: nothing is sent, so every backend honours it
    "medium": DiffusionParams(),
    # many steps, few tokens accepted in each, a stricter early stop: slowest, most careful
    "high": DiffusionParams(max_denoising_steps=64, entropy_bound=0.02, confidence_threshold=0.001),
}
"""What each level sets; fields a request sets in `diffusion` win over these."""


def diffusion_for(effort: Effort | None, diffusion: DiffusionParams | None) -> DiffusionParams | None:
    """The diffusion settings of a request: the effort level's, overridden by the explicit ones."""
    base = EFFORT_SETTINGS[effort] if effort is not None else DiffusionParams()
    if diffusion is not None:
        base = base.model_copy(update=diffusion.model_dump(exclude_none=True))
    return None if base.is_empty() else base


def more_effort(effort: Effort) -> list[Effort]:
    """The levels above `effort`, in order."""
    return list(EFFORT_LEVELS[EFFORT_LEVELS.index(effort) + 1 :])
