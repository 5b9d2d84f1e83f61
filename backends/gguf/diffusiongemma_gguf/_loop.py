"""Block diffusion on llama.cpp's logits, as the reference sampler runs it (shared/reference/diffusiongemma-model.md
§6), one request at a time: prefill the prompt into the model's store; then per canvas, every denoising step:
1. temperature, 2. forward (self-conditioned on the last step's logits), 3. accept, 4. renoise, 5. stop; and once
the canvas has converged (or its steps run out), 6. commit its argmax: the encoder writes it into the store.

Steps 1 and 3 to 5 are a `StepSampler`'s: numpy's by default, or torch's (the torch engine's own sampler pieces
and random streams). `generate_canvases` yields a report per step and per committed canvas, so a
caller can stream drafts and stop between any two steps (closing the generator stops the work).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from diffusiongemma_gguf._llama import LlamaCppModel
from diffusiongemma_sdk._local.settings import BANNED_LOGIT, SamplerSettings

__all__ = ["CanvasDone", "StepDone", "StepOutcome", "StepSampler", "generate_canvases"]


@dataclass(frozen=True)
class StepOutcome:
    """What one step decided: the next noisy canvas, the argmax draft, statistics, and whether it converged."""

    canvas: np.ndarray
    argmax: np.ndarray
    accepted_fraction: float
    mean_entropy: float
    converged: bool
    temperature: float


class StepSampler(Protocol):
    """The sampler's side of a step (temperature, acceptance, renoising, stop rule) for one request."""

    def start_canvas(self) -> np.ndarray:
        """A fully noised canvas; the stop rule's history starts again."""
        ...

    def step(self, logits: np.ndarray, steps_left: int) -> StepOutcome:
        """The step with `steps_left` to go: its temperature, acceptance, renoising and stop test, from its fp32
        logits ([C, V], bans applied)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StepDone:
    """The state after one denoising step."""

    canvas_index: int
    step: int  # 1 for the first step of a canvas
    draft: np.ndarray  # the argmax canvas
    accepted_fraction: float
    mean_entropy: float


@dataclass(frozen=True)
class CanvasDone:
    """A committed canvas (its argmax) and the request's counts so far."""

    canvas_index: int
    tokens: list[int]
    steps: int
    finished: bool  # a stop token, or the last canvas the request may have
    decoder_passes: int


def generate_canvases(
    model: LlamaCppModel,
    prompt: list[int],
    settings: SamplerSettings,
    sampler: StepSampler,
    *,
    max_canvases: int,
    stop_token_ids: tuple[int, ...],
) -> Generator[StepDone | CanvasDone, None, None]:
    """Generate up to `max_canvases` canvases after `prompt`; the model is back at rest when this ends or closes."""
    length = model.canvas_length
    capacity = len(prompt) + max_canvases * length
    banned = list(settings.banned_token_ids)
    passes = 0
    try:
        model.prefill(prompt, 0, capacity)
        prefix = len(prompt)
        for canvas_index in range(max_canvases):
            canvas, previous, temperature = sampler.start_canvas(), None, 1.0
            steps = 0
            for steps_left in range(settings.max_denoising_steps, 0, -1):
                steps += 1
                # 2. forward: the whole canvas re-predicted from its noisy tokens and the last step's logits
                logits = model.denoise(canvas, prefix, previous, temperature)
                logits[:, banned] = BANNED_LOGIT
                # 1, 3, 4, 5: temperature, acceptance, renoising, stop rule
                outcome = sampler.step(logits, steps_left)
                canvas, previous, temperature = outcome.canvas, logits, outcome.temperature
                yield StepDone(canvas_index, steps, outcome.argmax, outcome.accepted_fraction, outcome.mean_entropy)
                if outcome.converged:
                    break
            passes += steps
            committed = outcome.argmax.tolist()
            finished = canvas_index + 1 == max_canvases or any(token in stop_token_ids for token in committed)
            yield CanvasDone(canvas_index, committed, steps, finished, passes)
            if finished:
                return
            # 6. commit: the encoder writes the argmax canvas into the store
            model.prefill(committed, prefix, capacity)
            prefix += length
    finally:
        sampler.close()
        model.reset()
