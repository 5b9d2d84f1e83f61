"""Block-diffusion generation, as the reference sampler runs it (shared/reference/diffusiongemma-model.md §6).

Prefill the prompt into the KV cache; then per canvas, every denoising step: 1. temperature, 2. forward,
3. accept, 4. renoise, 5. stop; and once the canvas has converged (or its steps run out), 6. commit its argmax to
the cache. The sampler's pieces are in `_sampler`, the rows' bookkeeping of a batch in `_rows`.

`generate_canvases` is a generator of reports, one per denoising step and one per committed canvas, so a caller can
stream drafts and stop between any two steps (closing the generator stops the work).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

import torch

from diffusiongemma_sdk._local.settings import SamplerSettings
from diffusiongemma_torch._admission import PREFILL_CHUNK
from diffusiongemma_torch._model import DiffusionGemmaTextNet, KVCache
from diffusiongemma_torch._rows import BatchRows, CanvasRows
from diffusiongemma_torch._sampler import (
    LinearTemperatureSchedule,
    SharedRandomness,
    StableAndConfidentStop,
    VocabBuffers,
    ban_tokens,
    entropy_bound_acceptance,
    self_conditioning_probabilities,
    token_distribution,
)

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
    generator: torch.Generator,
    prompt_valid: torch.Tensor | None = None,
) -> Generator[DenoiseStep | CanvasCommitted, None, None]:
    """Generate canvases after `prompt` ([B, P], left-padded where `prompt_valid` is False), a static batch with
    transformers' batch semantics: one generator, drawn from as `generate()` draws, every row at every step until the
    whole batch has converged. (Serving uses the continuous-batching `RowPool`; this is the reference loop, and what
    the parity tests hold token for token against transformers.)

    `max_canvases` is one limit for the batch or one per row.
    """
    batch, device = prompt.shape[0], prompt.device
    length, vocab = net.config.canvas_length, net.config.vocab_size
    randomness = SharedRandomness(generator, batch, length, vocab, reference=settings.reference)
    limits = torch.as_tensor(max_canvases, device=device).expand(batch)
    try:
        capacity = prompt.shape[1] + int(limits.max()) * length  # the prompt and every canvas the rows may commit
        cache = net.new_cache(batch, capacity, room=min(PREFILL_CHUNK, prompt.shape[1]))
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
    randomness: SharedRandomness,
    limits: torch.Tensor,
    stop_tokens: torch.Tensor,
    pad_token_id: int,
) -> Iterator[DenoiseStep | CanvasCommitted]:
    batch = BatchRows(cache, limits)
    buffers = VocabBuffers()  # every canvas's steps reuse them
    committed: torch.Tensor | None = None
    canvas_index = 0
    while True:
        if committed is not None:  # 6. commit (the previous canvas): the encoder writes it into the KV cache
            net.encode(committed, batch.cache)
        passes_before = batch.passes.clone()
        argmax = yield from _denoise_canvas(net, batch, settings, randomness, buffers, canvas_index)
        committed = batch.commit(argmax, canvas_index, stop_tokens, pad_token_id)
        yield CanvasCommitted(
            canvas_index=canvas_index,
            tokens=committed,
            steps=batch.passes - passes_before,
            finished=batch.finished,
            decoder_passes=batch.passes.clone(),
        )
        if bool(batch.finished.all()):
            return
        canvas_index += 1


def _denoise_canvas(
    net: DiffusionGemmaTextNet,
    batch: BatchRows,
    settings: SamplerSettings,
    randomness: SharedRandomness,
    buffers: VocabBuffers,
    canvas_index: int,
) -> Generator[DenoiseStep, None, torch.Tensor]:
    """Denoise one canvas until every row has converged or the steps run out; returns the argmax canvas."""
    device = batch.finished.device
    rows = CanvasRows(batch, net.config.canvas_length, randomness)
    shape = (*rows.shape, net.config.vocab_size)
    schedule = LinearTemperatureSchedule(settings.t_min, settings.t_max, settings.max_denoising_steps)
    stop = StableAndConfidentStop(
        settings.stability_threshold, settings.confidence_threshold, settings.max_denoising_steps, rows.shape, device
    )
    for step, steps_left in enumerate(range(settings.max_denoising_steps, 0, -1), start=1):
        denoised = rows.start_step()
        # 1. temperature: linear from t_max at the first step towards t_min at the last
        temperature = schedule.at(steps_left, device)
        # 2. forward: the decoder re-predicts the whole canvas from its noisy tokens and the last step's soft tokens
        logits = net.denoise(rows.canvas, batch.cache, rows.soft, out=buffers.get("logits", shape, device))
        ban_tokens(logits, settings.banned_token_ids)
        scaled = logits.div_(temperature)
        probabilities, entropy = token_distribution(
            scaled, reference=settings.reference, out=buffers.get("probabilities", shape, device)
        )
        # 3. accept: the lowest-entropy positions within the entropy bound take a token sampled at this temperature
        accepted = entropy_bound_acceptance(entropy, settings.entropy_bound)
        # 4. renoise: every other position is redrawn uniformly from the vocabulary
        next_canvas = randomness.draw(probabilities, accepted)
        next_soft = net.soft_embedding(self_conditioning_probabilities(scaled, probabilities, net.dtype))
        argmax = torch.argmax(scaled, dim=-1)
        argmax, next_canvas, next_soft = rows.keep_converged(argmax, next_canvas, next_soft)
        # 5. stop: a row has converged once its argmax canvas is stable and its mean entropy is confident
        rows.update(next_canvas, argmax, next_soft, accepted, entropy, stop.converged(argmax, entropy))
        last_step = steps_left == 1 or rows.all_converged
        if not last_step:
            randomness.prefetch()
        yield DenoiseStep(
            canvas_index=canvas_index,
            step=step,
            draft=rows.argmax.clone(),
            accepted_fraction=rows.accepted_fraction.clone(),
            mean_entropy=rows.mean_entropy.clone(),
            denoised=denoised,
        )
        if last_step:
            break
    return rows.argmax
