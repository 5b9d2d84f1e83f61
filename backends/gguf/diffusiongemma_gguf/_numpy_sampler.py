"""The reference sampler's step in numpy, for installs without torch: the same distribution as the torch engine's
default sampler (accepted positions sampled at the step's temperature, the others renoised uniformly), numpy's own
random stream. Vocab-sized work goes a few rows at a time, so each row's passes stay in cache."""

from __future__ import annotations

import numpy as np

from diffusiongemma_gguf._loop import StepOutcome
from diffusiongemma_sdk._local.settings import SamplerSettings

__all__ = ["NumpyStepSampler"]

_CHUNK_BYTES = 1 << 20  # rows of fp32 logits handled per pass


class NumpyStepSampler:
    """One request's steps; `seed` fixes its random numbers."""

    def __init__(self, settings: SamplerSettings, *, length: int, vocab: int, seed: int) -> None:
        self._settings = settings
        self._length, self._vocab = length, vocab
        self._random = np.random.Generator(np.random.PCG64(seed))
        self._history = np.empty((0, length), dtype=np.int64)
        self._rows = max(1, _CHUNK_BYTES // (4 * vocab))

    def start_canvas(self) -> np.ndarray:
        depth = min(self._settings.stability_threshold, self._settings.max_denoising_steps)
        self._history = np.full((depth, self._length), -1, dtype=np.int64)  # the first step is never stable
        return self._random.integers(0, self._vocab, self._length)

    def _temperature(self, steps_left: int) -> float:
        """Linear from t_max at the first step towards t_min at the last, in fp32 as the reference computes it."""
        s = self._settings
        fraction = np.float32(steps_left) / np.float32(s.max_denoising_steps)
        return float(np.float32(s.t_min) + np.float32(s.t_max - s.t_min) * fraction)

    def step(self, logits: np.ndarray, steps_left: int) -> StepOutcome:
        temperature = self._temperature(steps_left)
        inverse = np.float32(1.0 / temperature)
        argmax = np.empty(self._length, dtype=np.int64)
        entropy = np.empty(self._length, dtype=np.float64)
        for start in range(0, self._length, self._rows):
            rows = slice(start, start + self._rows)
            scaled = logits[rows] * inverse
            top = scaled.max(axis=1, keepdims=True)
            argmax[rows] = scaled.argmax(axis=1)
            np.subtract(scaled, top, out=scaled)
            weights = np.exp(scaled)
            total = weights.sum(axis=1)
            # H = logsumexp(x) - sum(p x), with x shifted by its max
            entropy[rows] = np.log(total) - np.einsum("ij,ij->i", weights, scaled) / total
        accepted = _entropy_bound_acceptance(entropy, self._settings.entropy_bound)
        canvas = self._random.integers(0, self._vocab, self._length)  # 4. renoise all, then the accepted ...
        for position in np.flatnonzero(accepted):  # ... take a token sampled at this temperature
            weights = np.exp((logits[position] - logits[position].max()) * inverse, dtype=np.float64)
            cumulative = np.cumsum(weights)
            canvas[position] = min(
                int(np.searchsorted(cumulative, self._random.random() * cumulative[-1])), self._vocab - 1
            )
        stable = bool((self._history == argmax).all())
        if len(self._history):
            self._history = np.concatenate([self._history[1:], argmax[None]])
        mean_entropy = float(entropy.mean())
        return StepOutcome(
            canvas=canvas,
            argmax=argmax,
            accepted_fraction=float(accepted.mean()),
            mean_entropy=mean_entropy,
            converged=stable and mean_entropy < self._settings.confidence_threshold,
            temperature=temperature,
        )

    def close(self) -> None:
        """Nothing to release."""


def _entropy_bound_acceptance(entropy: np.ndarray, bound: float) -> np.ndarray:
    """The lowest-entropy positions whose entropies, less the largest of them, sum to at most `bound` (always one)."""
    order = np.argsort(entropy, kind="stable")
    ordered = entropy[order]
    keep = np.cumsum(ordered) - ordered <= bound
    accepted = np.zeros(len(entropy), dtype=bool)
    accepted[order] = keep
    return accepted
