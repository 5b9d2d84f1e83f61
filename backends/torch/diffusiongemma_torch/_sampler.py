"""The entropy-bound sampler: which canvas positions take a sampled token, and what the rest become.

Two implementations of one distribution:

- `reference` draws random numbers exactly as transformers' `generate()` does (a full `multinomial` over every
  position, then a full `randint` for renoising), so a seed reproduces its tokens.
- `default` samples only the positions the entropy bound accepts (acceptance does not depend on the sample), which
  skips most of the vocab-sized sampling work; the accepted tokens have the same distribution.

`torch.multinomial(p, 1)` is `argmax(p / Exponential(1) noise)`; the reference sampler draws that noise itself, in the
same order, so that on a CPU the next step's noise can be drawn in a background thread while the network runs, from
numpy's copy of the generator's stream (`mt19937`), and only the accepted rows are turned into numbers.

Where the random numbers come from: `SharedRandomness`, one generator for the whole batch (transformers' batch
semantics), or `RowRandomness`, one per row, so that a row in a batch draws what it would draw alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from diffusiongemma_torch import _mt19937 as mt19937

__all__ = ["NoiseSource", "Randomness", "RowRandomness", "SharedRandomness", "StepNoise", "StepOutcome", "sample_step"]


@dataclass
class StepNoise:
    """The random numbers one step of the reference sampler consumes, in the reference's order."""

    draws: torch.Tensor | np.ndarray  # multinomial's noise: [B * L, V] numbers, or their [B * L, V, 2] raw draws
    renoise: torch.Tensor  # [B, L]: fresh tokens for the positions not accepted

    def exponential(self, rows: torch.Tensor) -> torch.Tensor:
        """The noise of some rows (flat canvas positions), [len(rows), V]."""
        if isinstance(self.draws, torch.Tensor):
            return self.draws[rows]
        return mt19937.exponential(self.draws[rows.cpu().numpy()]).to(rows.device)


class NoiseSource:
    """Draws each step's reference noise from `generator`, one step ahead on a CPU.

    Call `prefetch()` only once it is certain that another step follows, so the generator is consumed exactly as the
    reference consumes it.
    """

    def __init__(self, generator: torch.Generator, batch: int, length: int, vocab: int) -> None:
        self._generator = generator
        self._shape = (batch, length, vocab)
        self._device = generator.device
        self._executor = ThreadPoolExecutor(max_workers=1) if self._device.type == "cpu" else None
        self._numpy_stream = self._device.type == "cpu" and mt19937.matches_torch()
        self._pending: Future[StepNoise] | None = None

    def prefetch(self) -> None:
        if self._executor is not None and self._pending is None:
            self._pending = self._executor.submit(self._draw)

    def take(self) -> StepNoise:
        if self._pending is None:
            return self._draw()
        noise, self._pending = self._pending.result(), None
        return noise

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _draw(self) -> StepNoise:
        batch, length, vocab = self._shape
        draws: torch.Tensor | np.ndarray
        if self._numpy_stream:
            draws = mt19937.draw(self._generator, batch * length * vocab).reshape(batch * length, vocab, 2)
        else:
            draws = torch.empty(batch * length, vocab, device=self._device).exponential_(1, generator=self._generator)
        renoise = torch.randint(0, vocab, (batch, length), generator=self._generator, device=self._device)
        return StepNoise(draws=draws, renoise=renoise)


class SharedRandomness:
    """One generator for the whole batch, consumed exactly as transformers' `generate()` consumes it: every row
    draws at every step, so `rows` must always be all of them."""

    def __init__(self, generator: torch.Generator, batch: int, length: int, vocab: int, *, reference: bool) -> None:
        self.reference = reference
        self._generator = generator
        self._shape = (batch, length)
        self._vocab = vocab
        self._noise = NoiseSource(generator, batch, length, vocab) if reference else None

    def new_canvas(self, rows: Sequence[int]) -> torch.Tensor:
        """Fully noised canvases for `rows`, [len(rows), L]."""
        return self._uniform()

    def prefetch(self, rows: Sequence[int]) -> None:
        """`rows` will be denoised once more: draw that step's reference noise ahead."""
        if self._noise is not None and rows:
            self._noise.prefetch()

    def draw(self, probabilities: torch.Tensor, accepted: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """The next canvases of `rows`: accepted positions sampled from `probabilities`, the others renoised."""
        if self._noise is not None:
            noise = self._noise.take()
            flat = accepted.view(-1).nonzero().squeeze(-1)
            next_canvas = noise.renoise.clone()
            picked = probabilities.view(-1, self._vocab)[flat] / noise.exponential(flat)
            next_canvas.view(-1)[flat] = torch.argmax(picked, dim=-1)
            return next_canvas
        positions = accepted.nonzero(as_tuple=True)
        draws = torch.multinomial(probabilities[positions], num_samples=1, generator=self._generator).squeeze(-1)
        next_canvas = self._uniform()
        next_canvas[positions] = draws
        return next_canvas

    def close(self) -> None:
        if self._noise is not None:
            self._noise.close()

    def _uniform(self) -> torch.Tensor:
        return torch.randint(0, self._vocab, self._shape, generator=self._generator, device=self._generator.device)


class RowRandomness:
    """One generator per row, drawn from only while its row is denoised.

    A row so consumes its generator exactly as the same prompt generated alone would, and gets that run's tokens, up
    to the rounding of batched arithmetic (which can, rarely, flip a sampled token).
    """

    def __init__(self, generators: Sequence[torch.Generator], length: int, vocab: int, *, reference: bool) -> None:
        self.reference = reference
        self._rows = [SharedRandomness(g, 1, length, vocab, reference=reference) for g in generators]

    def new_canvas(self, rows: Sequence[int]) -> torch.Tensor:
        """Fully noised canvases for `rows`, [len(rows), L]; the other rows draw nothing."""
        return torch.cat([self._rows[row].new_canvas([0]) for row in rows])

    def prefetch(self, rows: Sequence[int]) -> None:
        for row in rows:
            self._rows[row].prefetch([0])

    def draw(self, probabilities: torch.Tensor, accepted: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """The next canvases of `rows` ([len(rows), L]), each from its row's generator."""
        return torch.cat(
            [self._rows[row].draw(probabilities[i : i + 1], accepted[i : i + 1], [0]) for i, row in enumerate(rows)]
        )

    def close(self) -> None:
        for row in self._rows:
            row.close()


Randomness = SharedRandomness | RowRandomness


@dataclass
class StepOutcome:
    """One denoising step's result for the rows it sampled."""

    next_canvas: torch.Tensor  # [B, L] the canvas the next step reads
    argmax: torch.Tensor  # [B, L] argmax of the temperature-scaled logits: the draft, and what a commit keeps
    accepted: torch.Tensor  # [B, L] bool
    entropy: torch.Tensor  # [B, L] entropy (nats) of the temperature-scaled logits
    probabilities: torch.Tensor  # [B, L, V] fp32 softmax of the temperature-scaled logits


def sample_step(
    scaled_logits: torch.Tensor, entropy_bound: float, randomness: Randomness, rows: Sequence[int] | None = None
) -> StepOutcome:
    """Accept the lowest-entropy positions within `entropy_bound`, sample them, renoise the others.

    `scaled_logits` are those of the batch rows `rows` (default: the whole batch), whose random numbers they draw.
    The reference sampler takes `argmax(p / noise)` at accepted positions, which is the token `multinomial` draws
    with that noise.
    """
    probabilities = torch.softmax(scaled_logits, dim=-1, dtype=torch.float32)
    if randomness.reference:
        entropy = _categorical_entropy(scaled_logits)
    else:
        entropy = torch.logsumexp(scaled_logits, dim=-1) - (probabilities * scaled_logits).sum(dim=-1)
    accepted = _entropy_bound_mask(entropy, entropy_bound)
    return StepOutcome(
        next_canvas=randomness.draw(probabilities, accepted, range(accepted.shape[0]) if rows is None else rows),
        argmax=torch.argmax(scaled_logits, dim=-1),
        accepted=accepted,
        entropy=entropy,
        probabilities=probabilities,
    )


def _entropy_bound_mask(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """Accept the k lowest-entropy positions whose entropies, less the largest of them, sum to at most `bound`."""
    ordered, order = torch.sort(entropy, dim=-1)
    keep = torch.cumsum(ordered, dim=-1) - ordered <= bound
    return torch.scatter(torch.zeros_like(keep), dim=-1, index=order, src=keep)


def _categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy computed with the operations of `torch.distributions.Categorical(logits=...).entropy()`.

    Its clamp to the dtype's minimum is left out: the logits here are finite, so it changes no bit.
    """
    normalized = logits - logits.logsumexp(dim=-1, keepdim=True)
    probabilities = torch.softmax(normalized, dim=-1)
    return -(normalized * probabilities).sum(-1)
