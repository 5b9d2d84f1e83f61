"""The reference sampler's step with the torch engine's own pieces (diffusiongemma_torch._sampler): the same
temperatures, entropies, acceptance, stop rule and random streams as `torch:`, so a seed gives the tokens the torch
engine gives wherever the logits agree (`sampling="torch"`; needs diffusiongemma-torch). Its draws are the torch
engine's: `torch.multinomial` takes a vocab-sized noise row per accepted position."""

from __future__ import annotations

import numpy as np
import torch

from diffusiongemma_gguf._loop import StepOutcome
from diffusiongemma_sdk._local.settings import SamplerSettings
from diffusiongemma_torch._sampler import (
    LinearTemperatureSchedule,
    SharedRandomness,
    StableAndConfidentStop,
    entropy_bound_acceptance,
    token_distribution,
)

__all__ = ["TorchStepSampler"]


class TorchStepSampler:
    """One request's steps, drawing from a CPU `torch.Generator` seeded as the torch backend seeds its own."""

    def __init__(self, settings: SamplerSettings, *, length: int, vocab: int, seed: int) -> None:
        self._settings = settings
        self._length = length
        generator = torch.Generator().manual_seed(seed)
        self._randomness = SharedRandomness(generator, 1, length, vocab, reference=settings.reference)
        self._schedule = LinearTemperatureSchedule(settings.t_min, settings.t_max, settings.max_denoising_steps)
        self._stop = self._new_stop()

    def start_canvas(self) -> np.ndarray:
        self._stop = self._new_stop()
        canvas = self._randomness.new_canvas()
        self._randomness.prefetch()  # drawn while the first denoising pass runs
        return canvas[0].numpy()

    @torch.inference_mode()
    def step(self, logits: np.ndarray, steps_left: int) -> StepOutcome:
        temperature = self._schedule.at(steps_left, torch.device("cpu"))
        scaled = torch.from_numpy(logits)[None] / temperature
        probabilities, entropy = token_distribution(scaled, reference=self._settings.reference)
        accepted = entropy_bound_acceptance(entropy, self._settings.entropy_bound)
        canvas = self._randomness.draw(probabilities, accepted)
        argmax = torch.argmax(scaled, dim=-1)
        converged = bool(self._stop.converged(argmax, entropy)[0])
        if not (steps_left == 1 or converged):
            self._randomness.prefetch()
        return StepOutcome(
            canvas=canvas[0].numpy(),
            argmax=argmax[0].numpy(),
            accepted_fraction=float(accepted.float().mean()),
            mean_entropy=float(entropy.mean()),
            converged=converged,
            temperature=float(temperature),
        )

    def close(self) -> None:
        self._randomness.close()

    def _new_stop(self) -> StableAndConfidentStop:
        s = self._settings
        return StableAndConfidentStop(
            s.stability_threshold, s.confidence_threshold, s.max_denoising_steps, (1, self._length), torch.device("cpu")
        )
