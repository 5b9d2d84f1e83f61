"""The reference sampler's step in numpy: the same distribution as the torch engine's default sampler (accepted
positions sampled at the step's temperature, the others renoised uniformly), numpy's own random stream, and cheap at
the real vocabulary (262,144).

Vocab-sized work is a few passes over the logits (argmax, scale, exp, the entropy's dot product, the sums of
512-token blocks of `exp`), a few rows at a time so that a row stays in cache, rows spread over every core (numpy
releases the GIL). Sampling an accepted position then reads only the block sums and one block: a block is chosen by
its share of the row's mass, a token within it by its own, both from one uniform number (inverse CDF, exact up to
rounding), instead of a vocab-sized draw per position."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from diffusiongemma_gguf._loop import StepOutcome
from diffusiongemma_sdk._local.settings import SamplerSettings

__all__ = ["NumpyStepSampler"]

_CHUNK_BYTES = 1 << 20  # rows of fp32 logits handled per pass
_BLOCK = 512  # tokens per block of the two-level draw


class NumpyStepSampler:
    """One request's steps; `seed` fixes its random numbers."""

    def __init__(self, settings: SamplerSettings, *, length: int, vocab: int, seed: int) -> None:
        self._settings = settings
        self._length, self._vocab = length, vocab
        self._random = np.random.Generator(np.random.PCG64(seed))
        self._history = np.empty((0, length), dtype=np.int64)
        self._rows = max(1, _CHUNK_BYTES // (4 * vocab))
        self._starts = np.arange(0, vocab, _BLOCK)
        self._workers = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        self._workspaces = threading.local()  # each worker's two [rows, vocab] fp32 buffers, reused every step

    def start_canvas(self) -> np.ndarray:
        depth = min(self._settings.stability_threshold, self._settings.max_denoising_steps)
        self._history = np.full((depth, self._length), -1, dtype=np.int64)  # the first step is never stable
        return self._random.integers(0, self._vocab, self._length)

    def step(self, logits: np.ndarray, steps_left: int) -> StepOutcome:
        temperature = self._temperature(steps_left)
        inverse = np.float32(1.0 / temperature)
        length = self._length
        stats = _Stats(length, len(self._starts))
        chunks = [slice(start, min(start + self._rows, length)) for start in range(0, length, self._rows)]
        list(self._workers.map(lambda rows: self._measure(logits, rows, inverse, stats), chunks))
        accepted = _entropy_bound_acceptance(stats.entropy, self._settings.entropy_bound)
        canvas = self._random.integers(0, self._vocab, length)  # 4. renoise all, then the accepted ...
        for position in np.flatnonzero(accepted):  # ... take a token sampled at this temperature
            canvas[position] = self._draw(logits[position], inverse, stats.top[position], stats.blocks[position])
        stable = bool((self._history == stats.argmax).all())
        if len(self._history):
            self._history = np.concatenate([self._history[1:], stats.argmax[None]])
        mean_entropy = float(stats.entropy.mean())
        return StepOutcome(
            canvas=canvas,
            argmax=stats.argmax,
            accepted_fraction=float(accepted.mean()),
            mean_entropy=mean_entropy,
            converged=stable and mean_entropy < self._settings.confidence_threshold,
            temperature=temperature,
        )

    def close(self) -> None:
        self._workers.shutdown(wait=True)

    def _measure(self, logits: np.ndarray, rows: slice, inverse: np.float32, stats: _Stats) -> None:
        """Argmax, entropy, max and block sums of `rows` at this temperature, written into `stats`."""
        count = rows.stop - rows.start
        if getattr(self._workspaces, "scaled", None) is None:
            self._workspaces.scaled = np.empty((self._rows, self._vocab), dtype=np.float32)
            self._workspaces.weights = np.empty((self._rows, self._vocab), dtype=np.float32)
        scaled, weights = self._workspaces.scaled[:count], self._workspaces.weights[:count]
        block = logits[rows]
        best = block.argmax(axis=1)
        stats.argmax[rows] = best
        top = block[np.arange(count), best] * inverse  # the scaled maximum (scaling by 1/t > 0 keeps the order)
        stats.top[rows] = top
        np.multiply(block, inverse, out=scaled)
        np.subtract(scaled, top[:, None], out=scaled)
        np.exp(scaled, out=weights)
        sums = np.add.reduceat(weights, self._starts, axis=1)
        stats.blocks[rows] = sums
        total = sums.sum(axis=1, dtype=np.float64)
        # H = logsumexp(x) - sum(p x), with x shifted by its max
        stats.entropy[rows] = np.log(total) - np.einsum("ij,ij->i", weights, scaled) / total

    def _temperature(self, steps_left: int) -> float:
        """Linear from t_max at the first step towards t_min at the last, in fp32 as the reference computes it."""
        s = self._settings
        fraction = np.float32(steps_left) / np.float32(s.max_denoising_steps)
        return float(np.float32(s.t_min) + np.float32(s.t_max - s.t_min) * fraction)

    def _draw(self, row: np.ndarray, inverse: np.float32, top: np.float32, blocks: np.ndarray) -> int:
        """One token from softmax(row * inverse): a block by its mass, then a token within it."""
        cumulative = np.cumsum(blocks, dtype=np.float64)
        target = self._random.random() * cumulative[-1]
        block = min(int(np.searchsorted(cumulative, target, side="right")), len(blocks) - 1)
        target -= cumulative[block - 1] if block else 0.0
        start = int(self._starts[block])
        weights = np.cumsum(np.exp(row[start : start + _BLOCK] * inverse - top, dtype=np.float64))
        return start + min(int(np.searchsorted(weights, target, side="right")), len(weights) - 1)


class _Stats:
    """One step's per-position results, filled by the workers, each its own rows."""

    def __init__(self, length: int, blocks: int) -> None:
        self.argmax = np.empty(length, dtype=np.int64)
        self.entropy = np.empty(length, dtype=np.float64)
        self.top = np.empty(length, dtype=np.float32)
        self.blocks = np.empty((length, blocks), dtype=np.float32)


def _entropy_bound_acceptance(entropy: np.ndarray, bound: float) -> np.ndarray:
    """The lowest-entropy positions whose entropies, less the largest of them, sum to at most `bound` (always one)."""
    order = np.argsort(entropy, kind="stable")
    ordered = entropy[order]
    keep = np.cumsum(ordered) - ordered <= bound
    accepted = np.zeros(len(entropy), dtype=bool)
    accepted[order] = keep
    return accepted
