"""The bookkeeping of a static batch's rows (`generate_canvases`), kept out of the sampler's maths.

`BatchRows` follows the rows across canvases: which have finished, how many denoising passes each took.
`CanvasRows` holds one canvas's per-row state while it is denoised. As transformers' batched `generate()` does,
every row is computed at every step and a row that has converged keeps its state until the whole batch has.
"""

from __future__ import annotations

import torch

from diffusiongemma_torch._model import KVCache
from diffusiongemma_torch._sampler import SharedRandomness

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

    def __init__(self, cache: KVCache, limits: torch.Tensor) -> None:
        self.cache = cache
        self.limits = limits  # [B] canvases each row may have
        self.finished = limits <= 0
        self.passes = torch.zeros(len(limits), dtype=torch.int64, device=limits.device)

    def commit(self, argmax: torch.Tensor, canvas_index: int, stop_tokens: torch.Tensor, pad: int) -> torch.Tensor:
        """The committed canvas: rows finished earlier are pad, and so is everything after a row's first stop
        token; rows that stopped or reached their canvas limit are finished from now on."""
        tokens, stopped = committed_tokens(argmax, stop_tokens, pad)
        tokens[self.finished] = pad
        self.finished = self.finished | stopped | (self.limits <= canvas_index + 1)
        return tokens


class CanvasRows:
    """One canvas's per-row state while it is denoised: noisy canvas, argmax draft, soft tokens, convergence."""

    def __init__(self, batch: BatchRows, length: int, randomness: SharedRandomness) -> None:
        size, device = len(batch.finished), batch.finished.device
        self.shape = (size, length)
        self._batch = batch
        self.canvas = randomness.new_canvas()
        randomness.prefetch()  # drawn while the first denoising pass runs
        self.argmax = self.canvas.clone()
        self.soft: torch.Tensor | None = None
        self.converged = torch.zeros_like(batch.finished)
        self.accepted_fraction = torch.zeros(size, device=device)
        self.mean_entropy = torch.zeros(size, device=device)

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    def start_step(self) -> torch.Tensor:
        """Count this step for the rows it denoises ([B] bool, returned)."""
        denoised = ~(self.converged | self._batch.finished)
        self._batch.passes += denoised
        return denoised

    def keep_converged(
        self, argmax: torch.Tensor, canvas: torch.Tensor, soft: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows' new state, except that rows which converged earlier keep theirs."""
        kept = self.converged
        if not bool(kept.any()) or self.soft is None:
            return argmax, canvas, soft
        return (
            torch.where(kept[:, None], self.argmax, argmax),
            torch.where(kept[:, None], self.canvas, canvas),
            torch.where(kept[:, None, None], self.soft, soft),
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
        """Write the rows' state after a step."""
        self.converged |= converged
        self.canvas, self.argmax, self.soft = canvas, argmax, soft
        self.accepted_fraction = accepted.float().mean(dim=-1)
        self.mean_entropy = entropy.mean(dim=-1)
