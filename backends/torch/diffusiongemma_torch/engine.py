"""Block-diffusion generation: prefill, then per canvas denoise until stable and confident, commit the argmax.

`generate_canvases` is a generator of reports, one per denoising step and one per committed canvas, so a caller can
stream drafts and stop between any two steps (closing the generator stops the work).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from diffusiongemma_torch.config import SamplerSettings
from diffusiongemma_torch.model import DiffusionGemmaTextNet, KVCache
from diffusiongemma_torch.sampler import NoiseSource, sample_step

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


@dataclass
class CanvasCommitted:
    """A committed canvas: tokens after a row's first stop token are pad; finished rows stay finished."""

    canvas_index: int
    tokens: torch.Tensor  # [B, L]
    steps: int
    finished: torch.Tensor  # [B] bool: the row has produced a stop token
    decoder_passes: torch.Tensor  # [B] denoising passes each row needed so far


@torch.inference_mode()
def generate_canvases(
    net: DiffusionGemmaTextNet,
    prompt: torch.Tensor,
    settings: SamplerSettings,
    *,
    max_canvases: int,
    stop_token_ids: tuple[int, ...],
    pad_token_id: int,
    generator: torch.Generator,
    prompt_valid: torch.Tensor | None = None,
) -> Iterator[DenoiseStep | CanvasCommitted]:
    """Generate up to `max_canvases` canvases after `prompt` ([B, P], left-padded where `prompt_valid` is False)."""
    batch, device = prompt.shape[0], prompt.device
    length, vocab = net.config.canvas_length, net.config.vocab_size
    stop_tokens = torch.tensor(stop_token_ids, device=device)
    cache = net.new_cache(batch)
    for start in range(0, prompt.shape[1], PREFILL_CHUNK):
        chunk = slice(start, start + PREFILL_CHUNK)
        net.encode(prompt[:, chunk], cache, None if prompt_valid is None else prompt_valid[:, chunk])
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    noise = NoiseSource(generator, batch, length, vocab) if settings.reference else None
    try:
        yield from _canvases(net, cache, settings, noise, generator, max_canvases, stop_tokens, pad_token_id, finished)
    finally:
        if noise is not None:
            noise.close()


def _canvases(
    net: DiffusionGemmaTextNet,
    cache: KVCache,
    settings: SamplerSettings,
    noise: NoiseSource | None,
    generator: torch.Generator,
    max_canvases: int,
    stop_tokens: torch.Tensor,
    pad_token_id: int,
    finished: torch.Tensor,
) -> Iterator[DenoiseStep | CanvasCommitted]:
    batch, device = finished.shape[0], finished.device
    length, vocab = net.config.canvas_length, net.config.vocab_size
    passes = torch.zeros(batch, dtype=torch.int64, device=device)
    committed: torch.Tensor | None = None
    for canvas_index in range(max_canvases):
        if committed is not None:
            net.encode(committed, cache)
        canvas = torch.randint(0, vocab, (batch, length), generator=generator, device=device)
        if noise is not None:
            noise.prefetch()  # drawn while the first denoising pass runs
        argmax, soft = canvas, None
        converged = torch.zeros(batch, dtype=torch.bool, device=device)
        # a canvas is never stable for more steps than it gets, so a longer history would change nothing
        depth = min(settings.stability_threshold, settings.max_denoising_steps)
        history = torch.full((depth, batch, length), -1, dtype=torch.long, device=device)
        steps = 0
        for steps_left in range(settings.max_denoising_steps, 0, -1):
            passes += ~(converged | finished)
            scaled = net.denoise(canvas, cache, soft) / settings.temperature(steps_left, device)
            step_noise = noise.take() if noise is not None else None
            outcome = sample_step(scaled, canvas, settings.entropy_bound, generator, noise=step_noise)
            next_soft = net.soft_embedding(_self_conditioning_probabilities(scaled, outcome.probabilities, net.dtype))
            next_argmax, next_canvas = outcome.argmax, outcome.next_canvas
            if bool(converged.any()) and soft is not None:  # converged rows keep their state
                next_argmax = torch.where(converged[:, None], argmax, next_argmax)
                next_canvas = torch.where(converged[:, None], canvas, next_canvas)
                next_soft = torch.where(converged[:, None, None], soft, next_soft)
            stable = (history == next_argmax[None]).all(dim=-1).all(dim=0)
            if depth:
                history = torch.roll(history, shifts=-1, dims=0)
                history[-1] = next_argmax
            converged |= stable & (outcome.entropy.mean(dim=-1) < settings.confidence_threshold)
            canvas, argmax, soft = next_canvas, next_argmax, next_soft
            steps += 1
            last_step = steps_left == 1 or bool(converged.all())
            if noise is not None and not last_step:
                noise.prefetch()
            yield DenoiseStep(
                canvas_index=canvas_index,
                step=steps,
                draft=argmax,
                accepted_fraction=outcome.accepted.float().mean(dim=-1),
                mean_entropy=outcome.entropy.mean(dim=-1),
            )
            if last_step:
                break
        committed, finished = _finalize(argmax.clone(), finished, stop_tokens, pad_token_id)
        yield CanvasCommitted(
            canvas_index=canvas_index, tokens=committed, steps=steps, finished=finished, decoder_passes=passes.clone()
        )
        if bool(finished.all()):
            return


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
