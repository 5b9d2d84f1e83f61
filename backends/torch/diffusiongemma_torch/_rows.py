"""The bookkeeping of a batch's rows, kept out of the sampler's maths.

`BatchRows` follows the rows across canvases: which the KV cache still holds, which have finished, how many
denoising passes each took. `CanvasRows` holds one canvas's per-row state while it is denoised, and says which rows
each pass computes. With a generator per row ("compact"), only the rows still being denoised are computed, their
cache rows gathered once per change, and finished rows leave the cache for good. With one shared generator every row
is computed at every step and a converged row keeps its state, as the reference does with a batch.
"""

from __future__ import annotations

import torch

from diffusiongemma_torch._model import KVCache
from diffusiongemma_torch._sampler import Randomness

__all__ = ["BatchRows", "CanvasRows", "committed_tokens"]


def committed_tokens(argmax: torch.Tensor, stop_tokens: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvases as committed ([B, L]): everything after a row's first stop token is pad; and whether each row has a
    stop token (it is then finished)."""
    is_stop = torch.isin(argmax, stop_tokens)
    count = is_stop.cumsum(dim=-1)
    after_first_stop = (count > 0) & ~((count == 1) & is_stop)
    return argmax.masked_fill(after_first_stop, pad), is_stop.any(dim=-1)


class BatchRows:
    """The rows of a batch across canvases."""

    def __init__(self, cache: KVCache, limits: torch.Tensor, *, compact: bool) -> None:
        self.cache = cache
        self.limits = limits  # [B] canvases each row may have
        self.compact = compact
        self.finished = limits <= 0
        self.passes = torch.zeros(len(limits), dtype=torch.int64, device=limits.device)
        self.live = torch.arange(len(limits), device=limits.device)  # the batch rows `cache` holds, in its order

    def drop_finished(self) -> None:
        """With a generator per row, finished rows leave the cache for good."""
        if self.compact and bool(self.finished[self.live].any()):
            kept = (~self.finished[self.live]).nonzero().flatten()
            self.cache, self.live = self.cache.select(kept), self.live[kept]

    def live_rows_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """The rows of a [B, ...] tensor that the cache holds, in its order."""
        return tokens if len(self.live) == len(tokens) else tokens[self.live]

    def commit(self, argmax: torch.Tensor, canvas_index: int, stop_tokens: torch.Tensor, pad: int) -> torch.Tensor:
        """The committed canvas: rows finished earlier are pad, and so is everything after a row's first stop
        token; rows that stopped or reached their canvas limit are finished from now on."""
        tokens, stopped = committed_tokens(argmax, stop_tokens, pad)
        tokens[self.finished] = pad
        self.finished = self.finished | stopped | (self.limits <= canvas_index + 1)
        return tokens


class CanvasRows:
    """One canvas's per-row state while it is denoised: noisy canvas, argmax draft, soft tokens, convergence."""

    def __init__(self, batch: BatchRows, length: int, randomness: Randomness) -> None:
        size, device = len(batch.finished), batch.finished.device
        self.shape = (size, length)
        self._batch = batch
        self.canvas = torch.zeros(size, length, dtype=torch.long, device=device)
        self.canvas[batch.live] = randomness.new_canvas(batch.live.tolist())
        randomness.prefetch(batch.live.tolist())  # drawn while the first denoising pass runs
        self.argmax = self.canvas.clone()
        self.soft: torch.Tensor | None = None
        self.converged = batch.finished.clone() if batch.compact else torch.zeros_like(batch.finished)
        self.accepted_fraction = torch.zeros(size, device=device)
        self.mean_entropy = torch.zeros(size, device=device)
        self.computed = batch.live  # the rows the next pass computes
        self._computed_cache = batch.cache

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    def start_step(self) -> torch.Tensor:
        """Count this step for the rows it denoises ([B] bool, returned) and choose the rows it computes."""
        denoised = ~(self.converged | self._batch.finished)
        self._batch.passes += denoised
        if self._batch.compact and not torch.equal(self.computed, denoised.nonzero().flatten()):
            self.computed = denoised.nonzero().flatten()
            self._computed_cache = self._batch.cache.select(torch.searchsorted(self._batch.live, self.computed))
        return denoised

    def inputs(self) -> tuple[torch.Tensor, KVCache, torch.Tensor | None]:
        """The computed rows' canvases, their KV cache and their soft tokens from the last step."""
        soft = None if self.soft is None else self.soft[self.computed]
        return self.canvas[self.computed], self._computed_cache, soft

    def keep_converged(
        self, argmax: torch.Tensor, canvas: torch.Tensor, soft: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The computed rows' new state, except that rows which converged earlier keep theirs."""
        kept = self.converged[self.computed]
        if not bool(kept.any()) or self.soft is None:
            return argmax, canvas, soft
        rows = self.computed
        return (
            torch.where(kept[:, None], self.argmax[rows], argmax),
            torch.where(kept[:, None], self.canvas[rows], canvas),
            torch.where(kept[:, None, None], self.soft[rows], soft),
        )

    def update(
        self,
        canvas: torch.Tensor,
        argmax: torch.Tensor,
        soft: torch.Tensor,
        accepted: torch.Tensor,
        entropy: torch.Tensor,
        converged: torch.Tensor,
    ) -> None:
        """Write the computed rows' state after a step."""
        rows = self.computed
        self.converged[rows] |= converged
        self.canvas[rows], self.argmax[rows] = canvas, argmax
        if self.soft is None:
            self.soft = torch.zeros(self.shape[0], *soft.shape[1:], dtype=soft.dtype, device=soft.device)
        self.soft[rows] = soft
        self.accepted_fraction[rows] = accepted.float().mean(dim=-1)
        self.mean_entropy[rows] = entropy.mean(dim=-1)

    def denoised_next(self) -> list[int]:
        """The rows whose random numbers the next step draws."""
        if self._batch.compact:
            return (~self.converged).nonzero().flatten().tolist()
        return self._batch.live.tolist()
