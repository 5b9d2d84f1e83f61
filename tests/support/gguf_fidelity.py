"""llama.cpp's logits next to the torch engine's on the same tokens: the prompt's encoder pass (prefill), a canvas's
first denoising step, a self-conditioned step, and a step after a committed canvas (tests and evals use it)."""

from __future__ import annotations

import numpy as np
import torch

from diffusiongemma_gguf._llama import LlamaCppModel
from diffusiongemma_torch._model import DiffusionGemmaTextNet

__all__ = ["PHASES", "logits_side_by_side", "relative_difference"]

PHASES = ("prefill", "denoise", "denoise, self-conditioned", "denoise after a commit")


def relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    """The largest absolute difference, relative to the reference's largest magnitude."""
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@torch.inference_mode()
def logits_side_by_side(
    model: LlamaCppModel, net: DiffusionGemmaTextNet, prompt: list[int], seed: int = 0, temperature: float = 0.5
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(llama.cpp's, the torch engine's) fp32 logits for each of `PHASES`, from random canvases."""
    rng = np.random.default_rng(seed)
    length, vocab = model.canvas_length, model.vocab_size
    canvas, after = rng.integers(0, vocab, length), rng.integers(0, vocab, length)
    capacity = len(prompt) + 2 * length
    cache = net.new_cache(1, capacity)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    reference = net.encode(torch.tensor([prompt]), cache, logits=True)
    assert reference is not None
    pairs["prefill"] = (model.prefill(prompt, 0, capacity), reference[0, -1].numpy())
    first = model.denoise(canvas, len(prompt), None, temperature)
    first_reference = net.denoise(torch.tensor(canvas)[None], cache)[0]
    pairs["denoise"] = (first, first_reference.numpy())
    soft = net.soft_embedding(torch.softmax(first_reference[None] / temperature, dim=-1))
    pairs["denoise, self-conditioned"] = (
        model.denoise(canvas, len(prompt), first, temperature),
        net.denoise(torch.tensor(canvas)[None], cache, soft)[0].numpy(),
    )
    committed = first_reference.argmax(dim=-1)
    net.encode(committed[None], cache)
    model.prefill(committed.tolist(), len(prompt), capacity)
    pairs["denoise after a commit"] = (
        model.denoise(after, len(prompt) + length, None, temperature),
        net.denoise(torch.tensor(after)[None], cache)[0].numpy(),
    )
    model.reset()
    return pairs
