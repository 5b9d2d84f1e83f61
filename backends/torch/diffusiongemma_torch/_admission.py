"""Memory admission: what loading a checkpoint, one request and a batch of requests need, against what is free.

The loader checks the weights before it reads them; the backend checks each request before any work; the scheduler
admits a request into the running pool only while the memory left holds it. All three use these estimates, so they
agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from diffusiongemma_sdk import ConfigurationError, InvalidRequestError
from diffusiongemma_torch._config import TextConfig

__all__ = [
    "DTYPE_BYTES",
    "PREFILL_CHUNK",
    "cache_bytes",
    "check_load_memory",
    "check_request_memory",
    "fits_now",
    "load_bytes",
    "pool_bytes",
    "request_bytes",
]

PREFILL_CHUNK = 256
"""Prompt tokens encoded per pass: a long prompt's attention masks grow with chunk x context, not context squared."""
DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
_WORKSPACE_COPIES = 6  # logits, probabilities, noise and entropy buffers of one canvas, fp32
SAMPLING_COPIES = 2
"""fp32 canvas-by-vocabulary tensors alive at once while a row samples with the default sampler: the logits (scaled
in place) and the probabilities; the entropy and the draw take a few positions at a time (`_sampler.CHUNK_BYTES`).
The reference sampler's exponential noise adds two more (what `_WORKSPACE_COPIES` counts)."""
SAMPLING_WORKSPACE_BYTES = 512 * 2**20
"""How much the pool's sampling may hold at once: rows sample together up to this (at least one at a time)."""


def load_bytes(parameters: int, config: TextConfig, dtype: torch.dtype) -> int:
    """Memory a loaded checkpoint needs to generate: its text weights in `dtype` and one canvas's workspace."""
    return parameters * DTYPE_BYTES[dtype] + _workspace_bytes(config)


def cache_bytes(config: TextConfig, tokens: int, dtype: torch.dtype, prefill_chunk: int = PREFILL_CHUNK) -> int:
    """The KV cache buffers of one request with `tokens` of context: all of it on full-attention layers, the window
    and one pass's room on sliding ones (`KVCache`)."""
    return sum(_layer_cache_elements(config, tokens, prefill_chunk)) * DTYPE_BYTES[dtype]


def request_bytes(config: TextConfig, tokens: int, dtype: torch.dtype, prefill_chunk: int = PREFILL_CHUNK) -> int:
    """Memory one request adds to the loaded weights for `tokens` of context (prompt and answer).

    Its KV cache buffers; the largest transient of one layer's attention: its keys and values expanded once per query
    head for SDPA (every masked pass, and unmasked ones on layers whose head dim is over 256; the cache itself is
    attended in place); the prefill's two boolean masks of a chunk against the context, and the additive copy SDPA
    makes of one. SDPA does not materialize the attention scores (measured on CPU, torch 2.13: a 1,024 x 32,768
    masked pass over 8 heads grew the peak by 135 MB, the float mask, not the 1 GiB of scores).
    """
    size = DTYPE_BYTES[dtype]
    layers = _layer_cache_elements(config, tokens, prefill_chunk)
    groups = [config.num_heads // kv_heads for kv_heads in config.kv_heads]
    transient = max(elements * group if group > 1 else 0 for elements, group in zip(layers, groups, strict=True))
    chunk = min(tokens, prefill_chunk)
    return (sum(layers) + transient) * size + chunk * tokens * (2 + size)


def pool_bytes(
    config: TextConfig, tokens: Sequence[int], dtype: torch.dtype, workspace_bytes: int = SAMPLING_WORKSPACE_BYTES
) -> int:
    """Peak memory the continuous-batching pool adds to the loaded weights for requests of `tokens` context each.

    The slab of their caches (slots doubling as rows join, the last growth holding the old slab and the new one at
    once), then the larger of one prefill's transients and one step's sampling: the canvases by vocabulary tensors
    of as many rows at a time as `workspace_bytes` allows (`_pool.SAMPLING_COPIES` of them a row)."""
    rows, capacity = len(tokens), max(tokens)
    slots = 1
    while slots < rows:
        slots *= 2
    per_slot = cache_bytes(config, capacity, dtype)
    slab = (slots + slots // 2) * per_slot
    prefill = request_bytes(config, capacity, dtype) - per_slot
    canvas = SAMPLING_COPIES * config.canvas_length * config.vocab_size * 4
    sampling = min(rows, max(1, workspace_bytes // canvas)) * canvas
    return slab + max(prefill, sampling)


def fits_now(config: TextConfig, tokens: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether one more request of `tokens` context (its cache, transients and a canvas's workspace) fits in the memory
    left on `device` now (the running requests' caches are already allocated)."""
    return _free_when_short(request_bytes(config, tokens, dtype) + _workspace_bytes(config), device) is None


def check_request_memory(config: TextConfig, tokens: int, dtype: torch.dtype, device: torch.device) -> None:
    """Raise a clear error before a request whose context cannot fit in the memory left on `device`."""
    needed = request_bytes(config, tokens, dtype)
    if (available := _free_when_short(needed, device)) is not None:
        raise InvalidRequestError(
            f"A context of {tokens} tokens (prompt plus max_tokens) needs about {needed / 2**30:.1f} GiB for its KV "
            f"cache on {device}, but {available / 2**30:.1f} GiB is free. Lower max_tokens, shorten the prompt, or "
            "free memory."
        )


def check_load_memory(
    directory: Path, parameters: int, config: TextConfig, device: torch.device, dtype: torch.dtype
) -> None:
    """Raise a clear error before loading weights that cannot fit in the memory left on `device`."""
    needed = load_bytes(parameters, config, dtype)
    if (available := _free_when_short(needed, device)) is not None:
        raise ConfigurationError(
            f"Loading {directory.name} on {device} in {str(dtype).removeprefix('torch.')} needs about "
            f"{needed / 2**30:.1f} GiB but {available / 2**30:.1f} GiB is free. Free memory, use a quantized build "
            "(gguf:), or pick another device/dtype (device=..., dtype=...)."
        )


def _layer_cache_elements(config: TextConfig, tokens: int, prefill_chunk: int) -> list[int]:
    room = max(config.canvas_length, min(prefill_chunk, tokens))  # the most new positions one pass writes
    return [
        2 * heads * head_dim * (config.sliding_window - 1 + room if sliding else tokens)
        for sliding, head_dim, heads in zip(config.sliding, config.head_dims, config.kv_heads, strict=True)
    ]


def _workspace_bytes(config: TextConfig) -> int:
    """One canvas's fp32 logits, probabilities, noise and entropy buffers."""
    return _WORKSPACE_COPIES * config.canvas_length * config.vocab_size * 4


def _free_when_short(needed: int, device: torch.device) -> int | None:
    """The bytes free on `device` when they are fewer than `needed`; None when enough is free or it is unknown."""
    available = _available_bytes(device)
    return available if available is not None and needed > available else None


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
