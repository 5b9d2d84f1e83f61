"""The KV cache is allocated once and attended in place: a denoising step copies none of it, and its grouped query
heads read their key head's keys as they are (the encoder's passes expand them per query head, as transformers does,
once per chunk or committed canvas)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch._model import CacheSlab
from tests.support.tiny_checkpoint import TinySpec, build_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # grouped queries on both kinds of layer (4 query heads on 2 key heads, and on 1): keys are never expanded
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), TinySpec(sliding_window=16))


def test_a_denoising_step_attends_over_the_cache_buffers_in_place(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = load_checkpoint(str(tiny)).net
    canvas_length = net.config.canvas_length
    cache = net.new_cache(1, capacity=40 + 3 * canvas_length, room=40)
    net.encode(torch.randint(3, 200, (1, 40)), cache)  # longer than the sliding window
    buffers = [tensor.data_ptr() for tensor in (*cache.keys, *cache.values)]
    seen: list[tuple[int, int]] = []
    attention = F.scaled_dot_product_attention

    def recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append((k.data_ptr(), v.data_ptr()))
        return attention(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    for _ in range(3):  # denoising steps, then the commit of the canvas
        net.denoise(torch.randint(3, 200, (1, canvas_length)), cache)
    net.encode(torch.randint(3, 200, (1, canvas_length)), cache)
    assert [tensor.data_ptr() for tensor in (*cache.keys, *cache.values)] == buffers  # never reallocated
    layers = len(cache.keys)
    in_place = [(cache.keys[i].data_ptr(), cache.values[i].data_ptr()) for i in range(layers)]
    assert seen[: 3 * layers] == in_place * 3  # the steps read the buffers themselves
    expanded = [i for i in range(layers) if net.config.num_heads > net.config.kv_heads[i]]
    assert [seen[3 * layers + i] == in_place[i] for i in range(layers)] == [i not in expanded for i in range(layers)]
    assert cache.length == 40 + canvas_length
    assert cache.keys[0].shape[-2] == net.config.sliding_window - 1 + 40  # a sliding layer: window and room only


def test_a_pass_that_does_not_fit_is_refused_before_writing(tiny: Path) -> None:
    net = load_checkpoint(str(tiny)).net
    cache = net.new_cache(1, capacity=20, room=20)
    net.encode(torch.randint(3, 200, (1, 20)), cache)
    with pytest.raises(ValueError, match="do not fit"):
        net.encode(torch.randint(3, 200, (1, 4)), cache)


def test_rows_in_slots_of_a_slab_denoise_together_as_they_do_alone(tiny: Path) -> None:
    """A ragged batch: two rows at different positions, each attending over its own slot of the slab only."""
    net = load_checkpoint(str(tiny)).net
    length = net.config.canvas_length
    weight = net.embed_tokens.weight
    slab = CacheSlab(net.config, weight.device, weight.dtype, slots=3, capacity=37 + length, room=37)
    caches, alone_caches = [], []
    for slot, prompt_length in enumerate((5, 37)):
        prompt = torch.randint(3, 200, (1, prompt_length))
        caches.append(slab.cache(slot))
        net.encode(prompt, caches[-1])
        alone_caches.append(net.new_cache(1, capacity=prompt_length + length, room=prompt_length))
        net.encode(prompt, alone_caches[-1])
    canvas = torch.randint(3, 200, (2, length))
    soft = net.soft_embedding(torch.softmax(torch.randn(2, length, net.config.vocab_size), dim=-1))
    together = net.logits(net.denoise_rows(canvas, slab, caches, soft))
    for row, cache in enumerate(alone_caches):
        alone = net.denoise(canvas[row : row + 1], cache, soft[row : row + 1])
        assert torch.allclose(together[row : row + 1], alone, rtol=1e-5, atol=1e-5)
    assert [cache.length for cache in caches] == [5, 37]  # denoising writes nothing that counts


def test_prompts_prefilled_together_into_slots_are_as_prefilled_alone(tiny: Path) -> None:
    """Right-padded prompts, some longer than the sliding window, written into slots 2 and 0 in one causal pass: each
    slot holds what its prompt alone writes, and denoises as it does."""
    net = load_checkpoint(str(tiny)).net
    length = net.config.canvas_length
    weight = net.embed_tokens.weight
    slab = CacheSlab(net.config, weight.device, weight.dtype, slots=3, capacity=40 + length, room=40)
    prompts = [torch.randint(3, 200, (1, n)) for n in (40, 9)]
    ids = torch.zeros(2, 40, dtype=torch.long)
    ids[0], ids[1, :9] = prompts[0][0], prompts[1][0]
    caches = [slab.cache(2), slab.cache(0)]
    net.encode_fresh_rows(ids, [40, 9], slab, [2, 0], caches)
    canvas = torch.randint(3, 200, (1, length))
    for prompt, cache in zip(prompts, caches, strict=True):
        alone = net.new_cache(1, capacity=40 + length, room=40)
        net.encode(prompt, alone)
        assert cache.length == alone.length
        for layer, sliding in enumerate(net.config.sliding):
            held = cache.held(sliding)
            assert torch.allclose(cache.keys[layer][:, :, :held], alone.keys[layer][:, :, :held], atol=1e-5)
            assert torch.allclose(cache.values[layer][:, :, :held], alone.values[layer][:, :, :held], atol=1e-5)
        assert torch.allclose(net.denoise(canvas, cache), net.denoise(canvas, alone), rtol=1e-5, atol=1e-5)
