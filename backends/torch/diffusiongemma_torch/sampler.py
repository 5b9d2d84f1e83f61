"""The entropy-bound sampler: which canvas positions take a sampled token, and what the rest become.

Two implementations of one distribution:

- `reference` draws random numbers exactly as transformers' `generate()` does (a full `multinomial` over every
  position, then a full `randint` for renoising), so a seed reproduces its tokens.
- `default` samples only the positions the entropy bound accepts (acceptance does not depend on the sample), which
  skips most of the vocab-sized sampling work; the accepted tokens have the same distribution.

`torch.multinomial(p, 1)` is `argmax(p / Exponential(1) noise)`; the reference sampler draws that noise itself, in the
same order, so that on a CPU the next step's noise can be drawn in a background thread while the network runs.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

__all__ = ["NoiseSource", "StepNoise", "StepOutcome", "sample_step"]


@dataclass
class StepNoise:
    """The random numbers one step of the reference sampler consumes, in the reference's order."""

    exponential: torch.Tensor  # [B * L, V]: multinomial's noise
    renoise: torch.Tensor  # [B, L]: fresh tokens for the positions not accepted


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
        exponential = torch.empty(batch * length, vocab, device=self._device).exponential_(1, generator=self._generator)
        renoise = torch.randint(0, vocab, (batch, length), generator=self._generator, device=self._device)
        return StepNoise(exponential=exponential, renoise=renoise)


@dataclass
class StepOutcome:
    """One denoising step's result for every row."""

    next_canvas: torch.Tensor  # [B, L] the canvas the next step reads
    argmax: torch.Tensor  # [B, L] argmax of the temperature-scaled logits: the draft, and what a commit keeps
    accepted: torch.Tensor  # [B, L] bool
    entropy: torch.Tensor  # [B, L] entropy (nats) of the temperature-scaled logits
    probabilities: torch.Tensor  # [B, L, V] fp32 softmax of the temperature-scaled logits


def sample_step(
    scaled_logits: torch.Tensor,
    canvas: torch.Tensor,
    entropy_bound: float,
    generator: torch.Generator,
    *,
    noise: StepNoise | None = None,
) -> StepOutcome:
    """Accept the lowest-entropy positions within `entropy_bound`, sample them, renoise the others.

    With `noise` (the reference sampler) every position is sampled with it; without, only accepted positions are
    sampled, from `generator`.
    """
    batch, length, vocab = scaled_logits.shape
    probabilities = torch.softmax(scaled_logits, dim=-1, dtype=torch.float32)
    if noise is not None:
        ratio = torch.div(probabilities.view(-1, vocab), noise.exponential, out=noise.exponential)
        sampled = torch.argmax(ratio, dim=-1).view(batch, length)
        entropy = _categorical_entropy(scaled_logits)
    else:
        entropy = torch.logsumexp(scaled_logits, dim=-1) - (probabilities * scaled_logits).sum(dim=-1)
    argmax = torch.argmax(scaled_logits, dim=-1)
    accepted = _entropy_bound_mask(entropy, entropy_bound)
    if noise is not None:
        next_canvas = torch.where(accepted, sampled, noise.renoise)
    else:
        positions = accepted.nonzero(as_tuple=True)
        draws = torch.multinomial(probabilities[positions], num_samples=1, generator=generator).squeeze(-1)
        next_canvas = torch.randint(0, vocab, (batch, length), generator=generator, device=canvas.device)
        next_canvas[positions] = draws
    return StepOutcome(
        next_canvas=next_canvas,
        argmax=argmax,
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
