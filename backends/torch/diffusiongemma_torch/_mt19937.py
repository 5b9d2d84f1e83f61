"""Torch's CPU random stream drawn with numpy: `exponential_()`'s numbers, bit for bit, at a fraction of the cost.

The reference sampler must consume a CPU generator exactly as `torch.multinomial` does, which is one float32
`exponential_()` draw per vocabulary entry of every canvas position: millions of numbers a step, of which only the
rows the entropy bound accepts are ever used. torch's CPU generator is MT19937; `exponential_()` takes two 32-bit
outputs per number (the first is the high half of a 64-bit draw), forms `u = (draw mod 2**53) * 2**-53` and returns
`float32(-log1p(-u))`. numpy's MT19937 yields the same 32-bit stream several times faster, so `draw()` advances the
torch generator by taking the stream from numpy, and `exponential()` turns only the rows needed into numbers.

All of this depends on torch's generator internals; `matches_torch()` checks it against torch once per process, and
callers use torch's own `exponential_()` where it does not hold.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

__all__ = ["draw", "exponential", "matches_torch"]

# torch's CPUGeneratorImplState: int64 seed, int32 left, int32 seeded, uint64 next, uint64 state[624], ...
_LEFT = slice(8, 12)
_NEXT = slice(16, 24)
_KEY = slice(24, 24 + 624 * 8)
_STATE_BYTES = 5056


def draw(generator: torch.Generator, count: int) -> np.ndarray:
    """Advance a CPU `generator` past `count` float32 `exponential_()` numbers; return their raw [count, 2] draws."""
    state = generator.get_state().numpy().copy()
    left = int(state[_LEFT].view(np.int32)[0])
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937", "state": {"key": state[_KEY].view(np.uint64), "pos": 625 - left}}
    raw = np.random.Generator(bits).integers(0, 2**32, size=(count, 2), dtype=np.uint32)
    position = int(bits.state["state"]["pos"])
    state[_LEFT].view(np.int32)[0] = 625 - position
    state[_NEXT].view(np.uint64)[0] = position
    state[_KEY].view(np.uint64)[:] = bits.state["state"]["key"]
    generator.set_state(torch.from_numpy(state))
    return raw


def exponential(raw: np.ndarray) -> torch.Tensor:
    """The float32 numbers `exponential_()` makes of raw draws ([..., 2] uint32, high half first)."""
    high = torch.from_numpy((raw[..., 0] & 0x1FFFFF).astype(np.float64))
    low = torch.from_numpy(raw[..., 1].astype(np.float64))
    uniform = (high * 2.0**32 + low) * 2.0**-53
    return torch.log1p(-uniform).neg_().float()


@cache
def matches_torch() -> bool:
    """Whether `draw` + `exponential` reproduce this torch build's `exponential_()` and leave the same state."""
    ours, theirs = torch.Generator().manual_seed(20261127), torch.Generator().manual_seed(20261127)
    if ours.get_state().numel() != _STATE_BYTES:
        return False
    for count in (1, 700, 5000):  # crosses several MT19937 twists, from a fresh seed and mid-block
        expected = torch.empty(count).exponential_(1, generator=theirs)
        if not torch.equal(exponential(draw(ours, count)), expected):
            return False
    return torch.equal(ours.get_state(), theirs.get_state()) and torch.equal(
        torch.randint(0, 1000, (64,), generator=ours), torch.randint(0, 1000, (64,), generator=theirs)
    )
