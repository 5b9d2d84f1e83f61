"""The reference sampler's fast noise: numpy's copy of torch's CPU stream must be torch's, bit for bit."""

from __future__ import annotations

import torch

from diffusiongemma_torch import _mt19937 as mt19937


def test_numpy_stream_gives_torch_exponential_numbers_and_state() -> None:
    ours, theirs = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for generator in (ours, theirs):  # start mid-block, after draws of another kind
        torch.randint(0, 7, (333,), generator=generator)
    for count in (3, 624, 10_000):
        expected = torch.empty(count).exponential_(1, generator=theirs)
        assert torch.equal(mt19937.exponential(mt19937.draw(ours, count)), expected)
    assert torch.equal(ours.get_state(), theirs.get_state())
    assert torch.equal(torch.rand(5, generator=ours), torch.rand(5, generator=theirs))


def test_rows_can_be_turned_into_numbers_alone() -> None:
    generator, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    raw = mt19937.draw(generator, 6 * 50).reshape(6, 50, 2)
    expected = torch.empty(6, 50).exponential_(1, generator=reference)
    assert torch.equal(mt19937.exponential(raw[[1, 4]]), expected[[1, 4]])


def test_this_torch_build_takes_the_fast_path() -> None:
    assert mt19937.matches_torch()
