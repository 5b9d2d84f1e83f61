"""The prefix cache: keys and values of prompts already encoded, reused by prompts that start with the same tokens.

Agents send the same system prompt and tools on every turn, and the conversation so far again: those tokens need not
be encoded twice. A prompt is prefilled in blocks of `PREFILL_CHUNK` tokens from its first token; each whole block is
kept under the tokens up to its end (so a block is found only after the very tokens that came before it), with what
the next prompt needs of it: its keys and values on full-attention layers, and on sliding layers its last positions
(those a window ending at a later block can still see). A new prompt reuses its longest run of kept blocks, copied
into its own cache, and encodes the rest in the same blocks a cold prefill uses: the arithmetic is the same, and so
are the answers. Bounded by bytes: the least recently used blocks go first, the deepest first (a block is useless
without the ones before it, so using a block counts as using them too, and they stay longer).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch

from diffusiongemma_torch._model import KVCache

__all__ = ["PrefixCache"]


@dataclass
class _Block:
    """One block's keys and values per layer: all its positions on full layers, its tail on sliding ones."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class PrefixCache:
    """Blocks of encoded prompts, found by the tokens up to their end; at most `max_bytes` of them."""

    def __init__(self, max_bytes: int, block: int) -> None:
        self.max_bytes = max_bytes
        self.block = block
        self.bytes = 0
        self.hits = 0  # blocks reused
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()

    def reuse(self, ids: list[int], cache: KVCache) -> int:
        """Copy the longest run of kept blocks that `ids` starts with into `cache` (empty, of one row); return how
        many tokens it covers."""
        found: list[_Block] = []
        keys = []
        for key in _keys(ids, self.block):
            block = self._blocks.get(key)
            if block is None:
                break
            keys.append(key)
            found.append(block)
        self._touch(keys)
        if found:
            self._restore(cache, found)
            self.hits += len(found)
        return len(found) * self.block

    def keep(self, ids: list[int], cache: KVCache) -> None:
        """After `cache` encoded the whole block that ends its `cache.length` tokens of `ids`: keep that block."""
        end = cache.length
        if end % self.block or self.max_bytes <= 0:
            return
        keys = _keys(ids[:end], self.block)
        key = keys[-1]
        if key in self._blocks:
            self._touch(keys)
            return
        block = _Block(keys=[], values=[])
        for layer, sliding in enumerate(cache.sliding):
            held = cache.held(sliding)
            start = held - min(self.block, cache.window - 1) if sliding else end - self.block
            stop = held if sliding else end
            block.keys.append(cache.keys[layer][:, :, start:stop].clone())
            block.values.append(cache.values[layer][:, :, start:stop].clone())
        self._blocks[key] = block
        self.bytes += block.nbytes
        self._touch(keys)
        while self.bytes > self.max_bytes and self._blocks:
            _, evicted = self._blocks.popitem(last=False)
            self.bytes -= evicted.nbytes

    def _touch(self, keys: list[bytes]) -> None:
        """Mark a chain of blocks used: the deepest first, so the first block is the most recently used."""
        for key in reversed(keys):
            if key in self._blocks:
                self._blocks.move_to_end(key)

    def _restore(self, cache: KVCache, blocks: list[_Block]) -> None:
        length = len(blocks) * self.block
        for layer, sliding in enumerate(cache.sliding):
            if not sliding:
                for index, block in enumerate(blocks):
                    span = slice(index * self.block, (index + 1) * self.block)
                    cache.keys[layer][:, :, span] = block.keys[layer]
                    cache.values[layer][:, :, span] = block.values[layer]
                continue
            window = min(length, cache.window - 1)  # the last positions, from the last blocks' tails
            needed = -(-window // self.block)  # the blocks the window reaches back into
            last = blocks[-needed:]
            keys = torch.cat([block.keys[layer] for block in last], dim=2)[:, :, -window:]
            values = torch.cat([block.values[layer] for block in last], dim=2)[:, :, -window:]
            cache.keys[layer][:, :, :window] = keys
            cache.values[layer][:, :, :window] = values
        cache.length = length
        cache.valid = torch.ones(1, length, dtype=torch.bool, device=cache.valid.device)


def _keys(ids: list[int], block: int) -> list[bytes]:
    """The key of each whole block of `ids`: a digest of every token up to the block's end."""
    digest = hashlib.blake2b(digest_size=16)
    keys = []
    for end in range(block, len(ids) + 1, block):
        digest.update(array("q", ids[end - block : end]).tobytes())
        keys.append(digest.copy().digest())
    return keys
