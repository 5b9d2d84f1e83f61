"""The pieces of the reference sampler: the temperature schedule, the token distribution, the entropy-bound
acceptance rule, the renoising draw, the stable-and-confident stop rule (shared/reference/diffusiongemma-model.md §6).

Two implementations of one distribution:

- `reference` draws random numbers exactly as transformers' `generate()` does (a full `multinomial` over every
  position, then a full `randint` for renoising), so a seed reproduces its tokens.
- `default` samples only the positions the entropy bound accepts (acceptance does not depend on the sample), each
  by inverse CDF from one uniform number, which skips most of the vocab-sized sampling work; the accepted tokens have
  the same distribution.

`torch.multinomial(p, 1)` is `argmax(p / Exponential(1) noise)`; the reference sampler draws that noise itself, in the
same order, so that on a CPU the next step's noise can be drawn in a background thread while the network runs, from
numpy's copy of the generator's stream (`mt19937`), and only the accepted rows are turned into numbers.

Where the random numbers come from: `SharedRandomness`, one generator for all the rows it draws for, consumed as
transformers' `generate()` consumes it (a static batch), or for one row (each row of the continuous-batching pool has
its own, so it draws what it would draw alone).
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from diffusiongemma_sdk._local.settings import BANNED_LOGIT
from diffusiongemma_torch import _mt19937 as mt19937

__all__ = [
    "LinearTemperatureSchedule",
    "NoiseSource",
    "SharedRandomness",
    "StableAndConfidentStop",
    "StepNoise",
    "VocabBuffers",
    "ban_tokens",
    "entropy_bound_acceptance",
    "self_conditioning_probabilities",
    "token_distribution",
]


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
    """One generator for a batch of rows (or one row), consumed exactly as transformers' `generate()` consumes it:
    every row draws at every step."""

    def __init__(self, generator: torch.Generator, batch: int, length: int, vocab: int, *, reference: bool) -> None:
        self.reference = reference
        self._generator = generator
        self._shape = (batch, length)
        self._vocab = vocab
        self._noise = NoiseSource(generator, batch, length, vocab) if reference else None

    def new_canvas(self) -> torch.Tensor:
        """Fully noised canvases, [B, L]."""
        return self._uniform()

    def prefetch(self) -> None:
        """The rows will be denoised once more: draw that step's reference noise ahead."""
        if self._noise is not None:
            self._noise.prefetch()

    def draw(self, probabilities: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        """The next canvases: accepted positions sampled from `probabilities`, the others renoised."""
        if self._noise is not None:
            noise = self._noise.take()
            flat = accepted.view(-1).nonzero().squeeze(-1)
            next_canvas = noise.renoise.clone()
            picked = probabilities.view(-1, self._vocab)[flat] / noise.exponential(flat)
            next_canvas.view(-1)[flat] = torch.argmax(picked, dim=-1)
            return next_canvas
        positions = accepted.view(-1).nonzero().squeeze(-1)
        draws = _inverse_cdf(probabilities.view(-1, self._vocab), positions, self._generator)
        next_canvas = self._uniform()
        next_canvas.view(-1)[positions] = draws
        return next_canvas

    def close(self) -> None:
        if self._noise is not None:
            self._noise.close()

    def _uniform(self) -> torch.Tensor:
        return torch.randint(0, self._vocab, self._shape, generator=self._generator, device=self._generator.device)


@dataclass(frozen=True)
class LinearTemperatureSchedule:
    """The sampling temperature of each step: `t_max` at the first, falling linearly towards `t_min` at the last
    (transformers' `LinearTemperatureScheduleLogitsProcessor`). `steps` is both the cap and the denominator, so
    changing `max_denoising_steps` changes the temperature of every step."""

    t_min: float
    t_max: float
    steps: int

    def at(self, steps_left: int, device: torch.device) -> torch.Tensor:
        """The temperature with `steps_left` steps to go, in fp32 tensor arithmetic as the reference computes it."""
        step = torch.tensor(steps_left, dtype=torch.int32, device=device)
        return self.t_min + (self.t_max - self.t_min) * (step / self.steps)


CHUNK_BYTES = 4 * 2**20
"""The entropy and the default sampler's draw take this many bytes of vocabulary-sized rows at a time: their
temporaries stay small enough for the allocator to recycle them (instead of mapping fresh memory for every
vocabulary-sized one), and a step holds no more than its logits and probabilities."""


class VocabBuffers:
    """Where a denoising step's vocabulary-sized tensors (logits, probabilities) live, reused from step to step.

    On a CPU a fresh tensor of this size is memory the allocator maps anew and the kernel zero-fills page by page: at
    256 x 32,768 fp32 (32 MiB) that costs about 10 ms, as much as the arithmetic on it. Views of these buffers are valid
    until the next step asks for them again.
    """

    def __init__(self) -> None:
        self._held: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """An fp32 tensor of `shape` (uninitialized), the buffer `name` (grown when too small)."""
        size = math.prod(shape)
        held = self._held.get(name)
        if held is None or held.numel() < size or held.device != device:
            self._held.pop(name, None)  # the old buffer goes before the new one is made
            held = self._held[name] = torch.empty(size, device=device)
        return held[:size].view(shape)

    def release(self) -> None:
        """Let the buffers go (an idle engine holds none)."""
        self._held.clear()


def token_distribution(
    scaled_logits: torch.Tensor, *, reference: bool, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's fp32 probabilities ([B, L, V], written into `out` when given) and entropy in nats ([B, L])
    under the temperature-scaled logits; the reference sampler computes the entropy with `Categorical`'s operations,
    bit for bit. The entropy runs a few positions at a time (`CHUNK_BYTES`): each position's arithmetic is
    the same, and so are its bits."""
    if out is None:
        probabilities = torch.softmax(scaled_logits, dim=-1, dtype=torch.float32)
    else:
        probabilities = torch.softmax(scaled_logits, dim=-1, out=out)
    # subnormal probabilities (below 1.2e-38: a confident model's every unlikely token) become 0. They change no sum
    # of these probabilities, and a CPU computes with subnormals up to a hundred times slower: the self-conditioning
    # product of a demo canvas took 12 to 20 ms instead of 0.1
    torch.threshold_(probabilities, torch.finfo(torch.float32).tiny, 0.0)
    vocab = scaled_logits.shape[-1]
    flat_logits, flat_probabilities = scaled_logits.reshape(-1, vocab), probabilities.view(-1, vocab)
    positions = _rows_per_chunk(vocab)
    scratch = flat_logits.new_empty(2, min(positions, len(flat_logits)), vocab)  # every chunk's temporaries
    entropy = flat_logits.new_empty(len(flat_logits))
    for start in range(0, len(flat_logits), positions):
        chunk = slice(start, start + positions)
        if reference:
            entropy[chunk] = _categorical_entropy(flat_logits[chunk], scratch)
        else:
            entropy[chunk] = _entropy(flat_logits[chunk], flat_probabilities[chunk], scratch)
    return probabilities, entropy.view(scaled_logits.shape[:-1])


def _rows_per_chunk(vocab: int) -> int:
    """How many fp32 vocabulary-sized rows make `CHUNK_BYTES` (at least one)."""
    return max(1, CHUNK_BYTES // (vocab * 4))


def _entropy(scaled_logits: torch.Tensor, probabilities: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """logsumexp(s) - sum(p * s) of some positions, in `scratch` ([2, >= positions, V])."""
    products = torch.mul(probabilities, scaled_logits, out=scratch[1, : len(scaled_logits)])
    return _logsumexp(scaled_logits, scratch[0]) - products.sum(dim=-1)


def _logsumexp(logits: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """`torch.logsumexp(logits, dim=-1)`, bit for bit, without its subnormal terms: each `exp(x - max)` is taken at
    `x - max >= -87` (1.6e-38, the smallest normal numbers), which changes no sum that holds `exp(0) = 1`. A CPU's
    vectorized `exp` is some 25 times slower where its results are subnormal, as a confident model's are. Its
    temporary goes into `scratch` ([>= positions, V])."""
    maxes = torch.amax(logits, dim=-1, keepdim=True)
    maxes = maxes.masked_fill(maxes.abs() == float("inf"), 0.0)
    shifted = torch.sub(logits, maxes, out=scratch[: len(logits)])
    return shifted.clamp_(min=-87.0).exp_().sum(dim=-1).log_().add_(maxes.squeeze(-1))


def self_conditioning_probabilities(
    scaled: torch.Tensor, probabilities: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """What self-conditioning reads: the reference casts the scaled logits to the model dtype before its fp32
    softmax; in fp32 that is the step's probabilities themselves."""
    if dtype == torch.float32:
        return probabilities
    return torch.softmax(scaled.to(dtype), dim=-1, dtype=torch.float32)


def entropy_bound_acceptance(entropy: torch.Tensor, bound: float | torch.Tensor) -> torch.Tensor:
    """The acceptance rule: the k lowest-entropy positions whose entropies, less the largest of them, sum to at most
    `bound` (one for all rows, or [B, 1]: one per row). The lowest-entropy position is always accepted; acceptance
    does not depend on any sample."""
    ordered, order = torch.sort(entropy, dim=-1)
    keep = torch.cumsum(ordered, dim=-1) - ordered <= bound
    return torch.scatter(torch.zeros_like(keep), dim=-1, index=order, src=keep)


class StableAndConfidentStop:
    """The stop rule: a row's canvas has converged once its argmax canvas equals each of the last
    `stability_threshold` ones (the history starts at -1, so the first step is never stable) and its mean entropy is
    below `confidence_threshold` (transformers' `StableAndConfidentStoppingCriteria`)."""

    def __init__(
        self,
        stability_threshold: int,
        confidence_threshold: float,
        max_steps: int,
        shape: tuple[int, int],
        device: torch.device,
    ) -> None:
        # a canvas is never stable for more steps than it gets, so a longer history would change nothing
        depth = min(stability_threshold, max_steps)
        self._history = torch.full((depth, *shape), -1, dtype=torch.long, device=device)
        self._confidence = confidence_threshold

    def converged(self, argmax: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """Whether each row converged at this step, given its argmax canvas and entropies; records the canvas."""
        stable = (self._history == argmax[None]).all(dim=-1).all(dim=0)
        if len(self._history):
            self._history = torch.cat([self._history[1:], argmax[None]])
        return stable & (entropy.mean(dim=-1) < self._confidence)


def ban_tokens(logits: torch.Tensor, token_ids: tuple[int, ...]) -> None:
    """Make `token_ids` impossible to sample or commit (how tool_choice='none' is enforced), in place."""
    if token_ids:
        logits[..., list(token_ids)] = BANNED_LOGIT


def _inverse_cdf(probabilities: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token for each of `rows` of `probabilities` ([N, V]), drawn with one uniform number per row: the first token
    whose cumulative probability passes it (a token of probability 0 is never drawn). `CHUNK_BYTES` of rows at a
    time."""
    uniform = torch.rand(len(rows), 1, generator=generator, device=probabilities.device)
    vocab = probabilities.shape[-1]
    step = _rows_per_chunk(vocab)
    scratch = probabilities.new_empty(min(step, len(rows)), vocab)
    tokens = []
    for start in range(0, len(rows), step):
        chosen = rows[start : start + step]
        cumulative = torch.index_select(probabilities, 0, chosen, out=scratch[: len(chosen)]).cumsum_(dim=-1)
        scaled = uniform[start : start + step] * cumulative[:, -1:]
        tokens.append(torch.searchsorted(cumulative, scaled, right=True))
    drawn = torch.cat(tokens) if tokens else rows.new_empty(0, 1)
    return drawn.clamp_(max=vocab - 1).squeeze(-1)  # a sum rounded below its last term


def _categorical_entropy(logits: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Entropy computed with the operations of `torch.distributions.Categorical(logits=...).entropy()`, in `scratch`
    ([2, >= positions, V]).

    Its clamp to the dtype's minimum is left out: the logits here are finite, so it changes no bit; its logsumexp is
    `_logsumexp`, the same bits.
    """
    rows = len(logits)
    normalized = torch.sub(logits, _logsumexp(logits, scratch[0]).unsqueeze(-1), out=scratch[0, :rows])
    probabilities = torch.softmax(normalized, dim=-1, out=scratch[1, :rows])
    return -torch.mul(normalized, probabilities, out=scratch[0, :rows]).sum(-1)
