"""The torch engine computes what transformers' DiffusionGemmaForBlockDiffusion computes (dynamic cache path)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

from diffusiongemma_sdk._local.settings import SamplerSettings
from diffusiongemma_torch import _engine as engine
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch._engine import CanvasCommitted, generate_canvases
from diffusiongemma_torch._model import DiffusionGemmaTextNet
from diffusiongemma_torch._sampler import SharedRandomness, entropy_bound_acceptance, token_distribution
from tests.support.tiny_checkpoint import TinySpec, build_tiny_checkpoint

# transformers' reference generation is slow on CPU: at the default 60 s, a busy 2-core machine timed some of these out
pytestmark = pytest.mark.timeout(180)

SPECS = {
    "window-8-two-layers": TinySpec(sliding_window=8, canvas=16),
    "window-4-four-layers": TinySpec(
        layers=("sliding_attention", "sliding_attention", "full_attention", "full_attention"),
        sliding_window=4,
        canvas=8,
        experts=8,
        top_k=3,
    ),
    "window-32-three-layers": TinySpec(
        layers=("full_attention", "sliding_attention", "full_attention"), sliding_window=32, canvas=4, vocab=160
    ),
}


@pytest.fixture(scope="module", params=list(SPECS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    directory = build_tiny_checkpoint(tmp_path_factory.mktemp(request.param), SPECS[request.param])
    reference = DiffusionGemmaForBlockDiffusion.from_pretrained(directory).eval()
    return reference, load_checkpoint(str(directory)).net, SPECS[request.param]


def assert_close(expected: torch.Tensor, actual: torch.Tensor) -> None:
    scale = expected.abs().max().clamp(min=1e-12)
    assert ((expected - actual).abs().max() / scale).item() <= 1e-5


def softcapped(reference: DiffusionGemmaForBlockDiffusion, hidden: torch.Tensor) -> torch.Tensor:
    cap = reference.final_logit_softcapping
    return torch.tanh(reference.lm_head(hidden).float() / cap) * cap


@torch.no_grad()
def test_logits_match_prefill_denoise_self_conditioning_commit(pair: tuple) -> None:
    reference, net, spec = pair
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, spec.vocab, (2, spec.sliding_window + 3), generator=generator)
    hf_cache = DynamicCache(config=reference.config.text_config)
    cache = net.new_cache(2, capacity=spec.sliding_window + 3 + 3 * spec.canvas)
    encoded = reference.model.encoder(input_ids=prompt, past_key_values=hf_cache)
    assert_close(softcapped(reference, encoded.last_hidden_state), net.encode(prompt, cache, logits=True))
    for _canvas in range(3):  # several canvases: the context runs past the sliding window
        canvas = torch.randint(0, spec.vocab, (2, spec.canvas), generator=generator)
        assert_close(reference(decoder_input_ids=canvas, past_key_values=hf_cache).logits, net.denoise(canvas, cache))
        previous = torch.randn(2, spec.canvas, spec.vocab, generator=generator) * 3
        soft = net.soft_embedding(torch.softmax(previous, dim=-1, dtype=torch.float32))
        assert_close(
            reference(decoder_input_ids=canvas, past_key_values=hf_cache, self_conditioning_logits=previous).logits,
            net.denoise(canvas, cache, soft),
        )
        positions = torch.arange(cache.length, cache.length + spec.canvas)[None]
        committed = reference.model.encoder(input_ids=canvas, past_key_values=hf_cache, position_ids=positions)
        assert_close(softcapped(reference, committed.last_hidden_state), net.encode(canvas, cache, logits=True))


def run_engine(
    net: DiffusionGemmaTextNet, prompt: torch.Tensor, valid: torch.Tensor, settings: SamplerSettings, seed: int,
    canvases: int, stops: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    out, passes = [prompt], torch.zeros(prompt.shape[0])
    generator = torch.Generator().manual_seed(seed)
    for report in generate_canvases(
        net, prompt, settings, max_canvases=canvases, stop_token_ids=stops, pad_token_id=0, generator=generator,
        prompt_valid=valid,
    ):  # fmt: skip
        if isinstance(report, CanvasCommitted):
            out.append(report.tokens)
            passes = report.decoder_passes
    return torch.cat(out, dim=1), passes


@pytest.mark.parametrize(
    ("seed", "bound", "steps", "stops"),
    [(0, 0.1, 12, (1, 5, 6)), (3, 4.0, 5, tuple(range(20, 60))), (7, 0.5, 48, (1,))],
)
def test_reference_sampler_is_token_identical_to_generate(
    pair: tuple, seed: int, bound: float, steps: int, stops: tuple[int, ...]
) -> None:
    reference, net, spec = pair
    prompt = torch.tensor([[0, 0, 0, 2, 10, 11, 12], [2, 20, 21, 22, 23, 24, 25]]) % spec.vocab
    valid = torch.tensor([[False] * 3 + [True] * 4, [True] * 7])  # a left-padded batch
    settings = SamplerSettings(
        max_denoising_steps=steps, entropy_bound=bound, t_min=0.4, t_max=0.8, confidence_threshold=0.005,
        stability_threshold=1, reference=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    expected = reference.generate(
        prompt, attention_mask=valid.long(), max_new_tokens=3 * spec.canvas, max_denoising_steps=steps,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=bound), t_min=0.4, t_max=0.8, stability_threshold=1,
        confidence_threshold=0.005, eos_token_id=list(stops), pad_token_id=0,
    )  # fmt: skip
    tokens, passes = run_engine(net, prompt, valid, settings, seed, 3, stops)
    assert torch.equal(expected.sequences, tokens)
    new = tokens[:, prompt.shape[1] :]
    assert torch.allclose(expected.tokens_per_forward, (new != 0).sum(-1) / passes)
    if len(stops) > 10:  # with many stop tokens, a row stops inside a canvas and the rest of it is pad
        assert bool((new == 0).any())


def test_prompt_prefilled_in_chunks_is_token_identical_to_generate(
    pair: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt longer than the prefill chunk (here 3 tokens; a chunk of only left padding too) changes nothing."""
    reference, net, spec = pair
    monkeypatch.setattr(engine, "PREFILL_CHUNK", 3)
    prompt = torch.tensor([[0, 0, 0, 2, 10, 11, 12, 13, 14, 15, 16], [2, *range(20, 30)]]) % spec.vocab
    valid = torch.tensor([[False] * 3 + [True] * 8, [True] * 11])
    settings = SamplerSettings(
        max_denoising_steps=12, entropy_bound=0.1, t_min=0.4, t_max=0.8, confidence_threshold=0.005,
        stability_threshold=1, reference=True,
    )  # fmt: skip
    torch.manual_seed(0)
    expected = reference.generate(
        prompt, attention_mask=valid.long(), max_new_tokens=2 * spec.canvas, max_denoising_steps=12,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1), t_min=0.4, t_max=0.8, stability_threshold=1,
        confidence_threshold=0.005, eos_token_id=[1], pad_token_id=0,
    )  # fmt: skip
    tokens, _ = run_engine(net, prompt, valid, settings, 0, 2, (1,))
    assert torch.equal(expected.sequences, tokens)


def test_default_sampler_draws_from_the_same_distribution() -> None:
    """Same acceptance for the same logits; accepted tokens pass a chi-square test against the reference."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 12, generator=generator) * 2
    logits[0, 0] *= 4  # one confident position, always accepted
    draws = 6000
    counts = {True: torch.zeros(12), False: torch.zeros(12)}
    for reference in (True, False):
        rng = torch.Generator().manual_seed(42)
        randomness = SharedRandomness(rng, 1, 6, 12, reference=reference)
        masks = set()
        for _ in range(draws):
            probabilities, entropy = token_distribution(logits, reference=reference)
            accepted = entropy_bound_acceptance(entropy, 0.5)
            next_canvas = randomness.draw(probabilities, accepted)
            masks.add(tuple(accepted[0].tolist()))
            counts[reference][next_canvas[0, 0]] += 1
        assert len(masks) == 1  # acceptance depends on the logits only
    statistic = (((counts[True] - counts[False]) ** 2) / (counts[True] + counts[False]).clamp(min=1)).sum().item()
    degrees = int(((counts[True] + counts[False]) > 0).sum()) - 1
    assert statistic < chi_square_critical(degrees, 0.999)
    expected = torch.softmax(logits[0, 0], -1) * draws
    assert ((counts[False] - expected).abs() < 5 * expected.sqrt() + 5).all()


def chi_square_critical(degrees: int, quantile: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile."""
    z = {0.999: 3.090}[quantile]
    return degrees * (1 - 2 / (9 * degrees) + z * math.sqrt(2 / (9 * degrees))) ** 3


def test_loader_reads_config_variants(tmp_path: Path) -> None:
    """The published config spells full-layer shapes as global_*; transformers saves per_layer_config."""
    from diffusiongemma_torch._config import TextConfig

    base = {
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 16,
    }  # fmt: skip
    published = TextConfig.from_dict({"text_config": {**base, "global_head_dim": 16, "num_global_key_value_heads": 1}})
    assert published.layer_types[-1] == "full_attention"
    assert published.head_dims == (8, 8, 8, 8, 8, 16)
    assert published.kv_heads == (2, 2, 2, 2, 2, 1)
    saved = TextConfig.from_dict({**base, "per_layer_config": {"5": {"head_dim": 16, "num_key_value_heads": 1}}})
    assert saved.head_dims == published.head_dims
    assert saved.kv_heads == published.kv_heads
