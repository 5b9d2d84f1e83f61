"""The sampler's settings: a checkpoint's defaults, a request's overrides, and how many new tokens a request gets."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusiongemma_sdk._errors import ConfigurationError, InvalidRequestError
from diffusiongemma_sdk._types import DiffusionParams

__all__ = [
    "BANNED_LOGIT",
    "MAX_DENOISING_STEPS",
    "GenerationDefaults",
    "SamplerSettings",
    "canvases_for",
    "token_budget",
]

MAX_DENOISING_STEPS = 2**31 - 1  # the temperature schedule counts steps in int32, as the reference does
BANNED_LOGIT = -1e4
"""Where a banned token's logit is set: far below any softcapped logit, yet finite, so that entropies stay exact."""


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler's settings for one request."""

    max_denoising_steps: int
    entropy_bound: float
    t_min: float
    t_max: float
    confidence_threshold: float
    stability_threshold: int
    reference: bool = False
    banned_token_ids: tuple[int, ...] = ()  # never sampled nor committed (tool_choice="none" bans the call marker)


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampler defaults (a checkpoint's `generation_config.json`, a GGUF's `diffusion.eb_*` keys); a checkpoint's
    `max_new_tokens` is deliberately not kept."""

    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    confidence_threshold: float = 0.005
    stability_threshold: int = 1
    eos_token_ids: tuple[int, ...] = (1, 106, 50)
    pad_token_id: int = 0

    @classmethod
    def from_file(cls, path: Path, *, eos_token_ids: tuple[int, ...], pad_token_id: int) -> GenerationDefaults:
        """Read `generation_config.json`; the model config's stop and pad ids fill what it leaves out."""
        raw: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        sampler = raw.get("sampler_config") or {}
        eos = raw.get("eos_token_id")
        base = cls(eos_token_ids=eos_token_ids, pad_token_id=pad_token_id)
        return cls(
            max_denoising_steps=int(raw.get("max_denoising_steps") or base.max_denoising_steps),
            entropy_bound=float(sampler.get("entropy_bound") or base.entropy_bound),
            t_min=float(raw["t_min"]) if raw.get("t_min") is not None else base.t_min,
            t_max=float(raw["t_max"]) if raw.get("t_max") is not None else base.t_max,
            confidence_threshold=float(raw.get("confidence_threshold") or base.confidence_threshold),
            stability_threshold=int(raw["stability_threshold"])
            if raw.get("stability_threshold") is not None
            else base.stability_threshold,
            eos_token_ids=tuple(eos if isinstance(eos, list) else [eos]) if eos is not None else base.eos_token_ids,
            pad_token_id=int(raw["pad_token_id"]) if raw.get("pad_token_id") is not None else base.pad_token_id,
        )

    def resolve(self, params: DiffusionParams | None) -> SamplerSettings:
        """These defaults overridden by whatever a request sets."""
        p = params or DiffusionParams()
        settings = SamplerSettings(
            max_denoising_steps=p.max_denoising_steps or self.max_denoising_steps,
            entropy_bound=p.entropy_bound if p.entropy_bound is not None else self.entropy_bound,
            t_min=p.t_min if p.t_min is not None else self.t_min,
            t_max=p.t_max if p.t_max is not None else self.t_max,
            confidence_threshold=p.confidence_threshold
            if p.confidence_threshold is not None
            else self.confidence_threshold,
            stability_threshold=p.stability_threshold
            if p.stability_threshold is not None
            else self.stability_threshold,
            reference=p.sampler == "reference",
        )
        if not settings.t_max > settings.t_min:
            message = f"t_max ({settings.t_max}) must be greater than t_min ({settings.t_min})"
            if p.t_min is None and p.t_max is None:
                raise ConfigurationError(f"The checkpoint's sampler defaults are inconsistent: {message}.")
            raise InvalidRequestError(f"{message}; the request set one of them, the checkpoint the other.")
        if settings.max_denoising_steps > MAX_DENOISING_STEPS:
            raise InvalidRequestError(
                f"max_denoising_steps ({settings.max_denoising_steps}) is over this engine's limit of "
                f"{MAX_DENOISING_STEPS}."
            )
        return settings


def canvases_for(max_tokens: int, canvas_length: int) -> int:
    """Whole canvases needed for `max_tokens` new tokens."""
    return math.ceil(max_tokens / canvas_length)


def token_budget(prompt_tokens: int, requested: int | None, default: int, *, canvas: int, context: int) -> int:
    """The new tokens a request may have: its `max_tokens` (else `default`) within the model's `context` window.

    Whole `canvas`-token canvases must fit after the prompt. A `max_tokens` the request set and that does not fit is
    an error; the default shrinks to what fits.
    """
    room = (context - prompt_tokens) // canvas * canvas
    if room <= 0:
        raise InvalidRequestError(
            f"The prompt is {prompt_tokens} tokens: with one {canvas}-token canvas it exceeds the model's context of "
            f"{context} tokens. Shorten the conversation."
        )
    if requested is None:
        return min(default, room)
    if canvases_for(requested, canvas) * canvas > room:
        raise InvalidRequestError(
            f"max_tokens={requested} does not fit: the prompt takes {prompt_tokens} of the model's {context} context "
            f"tokens, which leaves room for {room} new tokens in whole {canvas}-token canvases. Lower max_tokens to "
            f"at most {room}."
        )
    return requested
