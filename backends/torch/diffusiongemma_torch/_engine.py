"""Block-diffusion generation: prefill, then per canvas denoise until stable and confident, commit the argmax.

`generate_canvases` is a generator of reports, one per denoising step and one per committed canvas, so a caller can
stream drafts and stop between any two steps (closing the generator stops the work).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

import torch

from diffusiongemma_torch._config import SamplerSettings
from diffusiongemma_torch._model import DiffusionGemmaTextNet, KVCache
from diffusiongemma_torch._sampler import Randomness, RowRandomness, SharedRandomness, sample_step

PREFILL_CHUNK = 1024
"""Prompt tokens encoded per pass: a long prompt's attention masks and scores grow with chunk x context, not
context squared."""

__all__ = ["CanvasCommitted", "DenoiseStep", "generate_canvases"]


@dataclass
class DenoiseStep:
    """The state after one denoising step (every row)."""

    canvas_index: int
    step: int  # 1 for the first step of a canvas
    draft: torch.Tensor  # [B, L] argmax canvas
    accepted_fraction: torch.Tensor  # [B]
    mean_entropy: torch.Tensor  # [B]
    denoised: torch.Tensor  # [B] bool: the row took this step (it had not converged or finished before it)


@dataclass
class CanvasCommitted:
    """A committed canvas: tokens after a row's first stop token are pad; finished rows stay finished."""

    canvas_index: int
    tokens: torch.Tensor  # [B, L]
    steps: torch.Tensor  # [B] denoising steps each row took on this canvas (0 for a row finished before it)
    finished: torch.Tensor  # [B] bool: the row gets no more canvases (a stop token, or its canvas limit)
    decoder_passes: torch.Tensor  # [B] denoising passes each row needed so far


@torch.inference_mode()
def generate_canvases(
    net: DiffusionGemmaTextNet,
    prompt: torch.Tensor,
    settings: SamplerSettings,
    *,
    max_canvases: int | Sequence[int],
    stop_token_ids: tuple[int, ...],
    pad_token_id: int,
    generator: torch.Generator | Sequence[torch.Generator],
    prompt_valid: torch.Tensor | None = None,
) -> Generator[DenoiseStep | CanvasCommitted, None, None]:
    """Generate canvases after `prompt` ([B, P], left-padded where `prompt_valid` is False).

    `max_canvases` is one limit for the batch or one per row. `generator` is one for the whole batch, drawn from as
    transformers' `generate()` draws, or one per row: a row then draws only while it is denoised and is not waited
    for once it has converged or finished, so it gets the tokens of its prompt generated alone with its generator
    (up to the rounding of batched arithmetic).
    """
    batch, device = prompt.shape[0], prompt.device
    length, vocab = net.config.canvas_length, net.config.vocab_size
    randomness: Randomness
    if isinstance(generator, torch.Generator):
        randomness = SharedRandomness(generator, batch, length, vocab, reference=settings.reference)
    else:
        if len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for a batch of {batch} rows")
        randomness = RowRandomness(generator, length, vocab, reference=settings.reference)
    limits = torch.as_tensor(max_canvases, device=device).expand(batch)
    try:
        cache = net.new_cache(batch)
        _prefill(net, cache, prompt, prompt_valid)
        stops = torch.tensor(stop_token_ids, device=device)
        yield from _canvases(net, cache, settings, randomness, limits, stops, pad_token_id)
    finally:
        randomness.close()


def _prefill(net: DiffusionGemmaTextNet, cache: KVCache, prompt: torch.Tensor, valid: torch.Tensor | None) -> None:
    for start in range(0, prompt.shape[1], PREFILL_CHUNK):
        chunk = slice(start, start + PREFILL_CHUNK)
        net.encode(prompt[:, chunk], cache, None if valid is None else valid[:, chunk])


def _canvases(
    net: DiffusionGemmaTextNet,
    cache: KVCache,
    settings: SamplerSettings,
    randomness: Randomness,
    limits: torch.Tensor,
    stop_tokens: torch.Tensor,
    pad_token_id: int,
) -> Iterator[DenoiseStep | CanvasCommitted]:
    device = limits.device
    # with a generator per row, only the rows still being denoised are computed; a shared stream draws for all rows
    # until every one has converged, as the reference does
    compact = isinstance(randomness, RowRandomness)
    finished = limits <= 0
    passes = torch.zeros(len(limits), dtype=torch.int64, device=device)
    live = torch.arange(len(limits), device=device)  # the batch rows `cache` holds, in its order
    committed: torch.Tensor | None = None
    canvas_index = 0
    while True:
        if compact and bool(finished[live].any()):  # finished rows leave the cache for good
            kept = (~finished[live]).nonzero().flatten()
            cache, live = cache.select(kept), live[kept]
        if committed is not None:
            net.encode(committed if len(live) == len(committed) else committed[live], cache)
        passes_before = passes.clone()
        argmax = yield from _denoise_canvas(net, cache, settings, randomness, canvas_index, live, finished, passes)
        committed, finished = _finalize(argmax, finished, stop_tokens, pad_token_id)
        finished |= limits <= canvas_index + 1
        yield CanvasCommitted(
            canvas_index=canvas_index,
            tokens=committed,
            steps=passes - passes_before,
            finished=finished,
            decoder_passes=passes.clone(),
        )
        if bool(finished.all()):
            return
        canvas_index += 1


def _denoise_canvas(
    net: DiffusionGemmaTextNet,
    cache: KVCache,
    settings: SamplerSettings,
    randomness: Randomness,
    canvas_index: int,
    live: torch.Tensor,
    finished: torch.Tensor,
    passes: torch.Tensor,
) -> Generator[DenoiseStep, None, torch.Tensor]:
    """Denoise one canvas until every row has converged or the steps run out; returns the argmax canvas.

    `passes` counts each row's denoising passes, in place.
    """
    batch, device = len(finished), finished.device
    length = net.config.canvas_length
    compact = isinstance(randomness, RowRandomness)
    canvas = torch.zeros(batch, length, dtype=torch.long, device=device)
    canvas[live] = randomness.new_canvas(live.tolist())
    randomness.prefetch(live.tolist())  # drawn while the first denoising pass runs
    argmax, soft = canvas.clone(), None
    converged = finished.clone() if compact else torch.zeros_like(finished)
    # a canvas is never stable for more steps than it gets, so a longer history would change nothing
    depth = min(settings.stability_threshold, settings.max_denoising_steps)
    history = torch.full((depth, batch, length), -1, dtype=torch.long, device=device)
    accepted_fraction = torch.zeros(batch, device=device)
    mean_entropy = torch.zeros(batch, device=device)
    rows, rows_cache = live, cache
    for step, steps_left in enumerate(range(settings.max_denoising_steps, 0, -1), start=1):
        denoised = ~(converged | finished)
        passes += denoised
        if compact and not torch.equal(rows, denoised.nonzero().flatten()):
            rows = denoised.nonzero().flatten()
            rows_cache = cache.select(torch.searchsorted(live, rows))
        scaled = net.denoise(canvas[rows], rows_cache, None if soft is None else soft[rows])
        scaled = scaled / settings.temperature(steps_left, device)
        outcome = sample_step(scaled, settings.entropy_bound, randomness, rows.tolist())
        next_soft = net.soft_embedding(_self_conditioning_probabilities(scaled, outcome.probabilities, net.dtype))
        next_argmax, next_canvas = outcome.argmax, outcome.next_canvas
        kept = converged[rows]
        if bool(kept.any()) and soft is not None:  # converged rows keep their state
            next_argmax = torch.where(kept[:, None], argmax[rows], next_argmax)
            next_canvas = torch.where(kept[:, None], canvas[rows], next_canvas)
            next_soft = torch.where(kept[:, None, None], soft[rows], next_soft)
        stable = (history[:, rows] == next_argmax[None]).all(dim=-1).all(dim=0)
        if depth:
            history[:, rows] = torch.cat([history[1:, rows], next_argmax[None]])
        converged[rows] |= stable & (outcome.entropy.mean(dim=-1) < settings.confidence_threshold)
        canvas[rows], argmax[rows] = next_canvas, next_argmax
        if soft is None:
            soft = torch.zeros(batch, *next_soft.shape[1:], dtype=next_soft.dtype, device=device)
        soft[rows] = next_soft
        accepted_fraction[rows] = outcome.accepted.float().mean(dim=-1)
        mean_entropy[rows] = outcome.entropy.mean(dim=-1)
        last_step = steps_left == 1 or bool(converged.all())
        if not last_step:
            randomness.prefetch((~converged).nonzero().flatten().tolist() if compact else live.tolist())
        yield DenoiseStep(
            canvas_index=canvas_index,
            step=step,
            draft=argmax.clone(),
            accepted_fraction=accepted_fraction.clone(),
            mean_entropy=mean_entropy.clone(),
            denoised=denoised,
        )
        if last_step:
            break
    return argmax


def _self_conditioning_probabilities(
    scaled: torch.Tensor, probabilities: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The reference casts the scaled logits to the model dtype before its fp32 softmax; in fp32 that is a no-op."""
    if dtype == torch.float32:
        return probabilities
    return torch.softmax(scaled.to(dtype), dim=-1, dtype=torch.float32)


def _finalize(
    tokens: torch.Tensor, finished: torch.Tensor, stop_tokens: torch.Tensor, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad rows that finished earlier, and every token after the first stop token of rows finishing now."""
    is_stop = torch.isin(tokens, stop_tokens)
    tokens[finished] = pad
    count = is_stop.cumsum(dim=-1)
    after_first_stop = (count > 0) & ~((count == 1) & is_stop)
    tokens[after_first_stop & ~finished[:, None]] = pad
    return tokens, finished | is_stop.any(dim=-1)
