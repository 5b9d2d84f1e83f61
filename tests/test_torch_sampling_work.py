"""The sampler's vocabulary-sized work costs no bits: reused buffers, no subnormal numbers, entropies a few positions
at a time and the default sampler's inverse-CDF draw give what the plain arithmetic gives."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from diffusiongemma_sdk import DiffusionParams
from diffusiongemma_sdk._local.settings import BANNED_LOGIT
from diffusiongemma_torch import _sampler as sampler
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch._pool import RowPool
from diffusiongemma_torch.demo import DEMO_DIR

TINY = torch.finfo(torch.float32).tiny


def confident_logits(rows: int = 4, positions: int = 16, vocab: int = 512) -> torch.Tensor:
    """Logits as a trained model's: one token far ahead, so that most probabilities are subnormal or zero."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, positions, vocab, generator=generator) * 3
    logits[..., 7] += torch.linspace(60, 120, positions)  # from subnormal tails to ones that underflow to zero
    logits[0, 0, 11] = BANNED_LOGIT  # a banned token
    logits[1, 1] = 5.0  # a position where every token is equally likely
    return logits


@pytest.mark.parametrize("scale", [1.0, 10.0, 200.0])
def test_logsumexp_is_torchs_bit_for_bit(scale: float) -> None:
    logits = confident_logits() * scale
    scratch = torch.empty(logits.shape)
    assert torch.equal(sampler._logsumexp(logits, scratch), torch.logsumexp(logits, dim=-1))


@pytest.mark.parametrize("reference", [True, False])
def test_the_distribution_holds_no_subnormal_and_its_entropy_is_the_plain_one(
    reference: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    logits = confident_logits()
    assert bool(((torch.softmax(logits, -1) > 0) & (torch.softmax(logits, -1) < TINY)).any())  # the case at hand
    monkeypatch.setattr(sampler, "CHUNK_BYTES", 5 * logits.shape[-1] * 4)  # five positions at a time
    probabilities, entropy = sampler.token_distribution(logits, reference=reference)
    assert not bool(((probabilities > 0) & (probabilities < TINY)).any())
    plain = torch.softmax(logits, dim=-1)
    assert torch.equal(probabilities, torch.where(plain < TINY, 0.0, plain))
    if reference:
        assert torch.equal(entropy, torch.distributions.Categorical(logits=logits).entropy())
    else:
        expected = torch.logsumexp(logits, dim=-1) - (plain * logits).sum(dim=-1)
        assert torch.allclose(entropy, expected, rtol=0, atol=1e-6)


def test_the_self_conditioning_product_is_the_same_without_subnormals() -> None:
    logits = confident_logits()
    embedding = torch.randn(logits.shape[-1], 64, generator=torch.Generator().manual_seed(1))
    probabilities, _ = sampler.token_distribution(logits, reference=True)
    assert torch.equal(probabilities @ embedding, torch.softmax(logits, dim=-1) @ embedding)


def test_the_inverse_cdf_never_draws_a_token_of_probability_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    probabilities = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    monkeypatch.setattr(sampler, "CHUNK_BYTES", 2 * 5 * 4)  # two rows at a time
    generator = torch.Generator().manual_seed(3)
    rows = torch.arange(3)
    draws = torch.stack([sampler._inverse_cdf(probabilities, rows, generator) for _ in range(2000)])
    assert set(draws[:, 0].tolist()) == {1, 3}
    assert set(draws[:, 1].tolist()) == {4}
    assert set(draws[:, 2].tolist()) == {0}
    assert 900 < int((draws[:, 0] == 1).sum()) < 1100


def test_the_pool_reuses_its_sampling_buffers_and_lets_them_go_when_idle() -> None:
    checkpoint = load_checkpoint(str(DEMO_DIR))
    defaults = checkpoint.defaults
    pool = RowPool(checkpoint.net, stop_token_ids=defaults.eos_token_ids, pad_token_id=defaults.pad_token_id)
    settings = defaults.resolve(DiffusionParams(max_denoising_steps=6, confidence_threshold=1e-12))
    row = pool.admit([2, 105, 30, 31, 32], settings, torch.Generator().manual_seed(0), 1)
    storages = set()
    while row in pool.rows:
        pool.step()
        if pool.rows:
            storages.add(pool.buffers._held["logits"].data_ptr())
    assert len(storages) == 1  # every step wrote the same memory
    assert not pool.buffers._held  # the idle pool holds none
