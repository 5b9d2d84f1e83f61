"""What several benchmarks share: the mid-size config they build random checkpoints of, and waiting for a device."""

from __future__ import annotations

import torch

from tests.support.tiny_checkpoint import TinySpec

__all__ = ["MID_CONFIG", "synchronize"]

MID_CONFIG = TinySpec(
    vocab=32768, hidden=512, layers=("sliding_attention",) * 3 + ("full_attention",), sliding_window=512,
    canvas=256, experts=16, top_k=4, heads=8, kv_heads=4, head_dim=64, global_head_dim=128, global_kv_heads=2,
)  # fmt: skip
"""Hidden 512, 4 layers (1 full), vocab 32,768, 16 experts top-4, canvas 256: the smallest config whose step is
dominated by the same work as the real model's (the vocabulary-sized tensors, the experts)."""


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so that a timer measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
