"""The gguf: backend without llama.cpp: the converter's layout, the header reader, the tokenizer both ways, the
torch engine on a GGUF's dequantized tensors, options and the stock-install error. Every file is written by the
converter or by `gguf` (tests/support/gguf_files.py); llama.cpp's own tests are in test_gguf_llama_cpp.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from gguf import GGMLQuantizationType, GGUFReader, quants
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from typer.testing import CliRunner

from diffusiongemma_gguf import GGUFHeader, LlamaCppUnavailableError, create_backend
from diffusiongemma_gguf import _build as build
from diffusiongemma_gguf import _layout as layout
from diffusiongemma_gguf._numpy_sampler import NumpyStepSampler
from diffusiongemma_gguf._support import LlamaCppSupport
from diffusiongemma_gguf._torch_engine import text_config
from diffusiongemma_gguf._vocab import tokenizer_from_vocab, vocab_from_tokenizer_json
from diffusiongemma_sdk import AsyncDiffusionGemma, BackendOptions, ConfigurationError
from diffusiongemma_sdk._cli import app
from diffusiongemma_sdk._local.settings import SamplerSettings
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch._sampler import LinearTemperatureSchedule, entropy_bound_acceptance, token_distribution
from diffusiongemma_torch.demo import DEMO_DIR
from tests.support.gguf_files import rewrite_gguf

pytestmark = pytest.mark.anyio

PROMPTS = [
    "Sort these numbers: 42 7 19 88 3 56",
    "Reverse these words: red green blue",
    "Reverse these words: lion moon pear snow",
]
TEXTS = [
    "<bos><|turn>user\nSort these numbers: 17 4 9<turn|>\n<|turn>model\n",
    "  two  spaces, tabs\tand\nnewlines\n\n",
    "ünïcödé — 日本語 🙂 <|tool_call>call:add{a:1,b:2}<tool_call|>",
    "",
]


def test_the_converter_writes_the_pr_layout(demo_files: dict[str, Path]) -> None:
    reader = GGUFReader(demo_files["q8_0"])
    fields = {name: field.contents() for name, field in reader.fields.items()}
    config = json.loads((DEMO_DIR / "config.json").read_text())["text_config"]
    generation = json.loads((DEMO_DIR / "generation_config.json").read_text())
    assert fields["general.architecture"] == "diffusion-gemma"
    assert fields["diffusion.canvas_length"] == 32
    assert fields["diffusion.eb_max_steps"] == generation["max_denoising_steps"]
    assert fields["diffusion-gemma.attention.causal"] is False
    assert fields["diffusion-gemma.attention.head_count_kv"] == [4, 1, 4, 1]
    assert fields["diffusion-gemma.attention.sliding_window_pattern"] == [True, False, True, False]
    assert fields["diffusion-gemma.attention.key_length"] == 40
    assert fields["diffusion-gemma.attention.key_length_swa"] == 20
    assert fields["diffusion-gemma.block_count"] == config["num_hidden_layers"]
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.chat_template"] == (DEMO_DIR / "chat_template.jinja").read_text()
    assert len(fields["tokenizer.ggml.tokens"]) == config["vocab_size"]
    names = {tensor.name: tensor for tensor in reader.tensors}
    net = load_checkpoint(str(DEMO_DIR), device="cpu", dtype="float32").net
    assert set(names) == {layout.gguf_name(name) for name in net.state_dict()} | {"rope_freqs.weight"}
    assert "blk.1.attn_v.weight" not in names  # full layers take V = K
    assert names["blk.0.ffn_gate_up_exps.weight"].shape.tolist() == [160, 320, 4]  # ggml order: reversed
    assert names["blk.0.ffn_gate_up_exps.weight"].tensor_type == GGMLQuantizationType.Q8_0
    assert names["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
    assert names["blk.0.ffn_gate_inp.weight"].tensor_type == GGMLQuantizationType.F32


def test_f32_holds_the_checkpoint_weights_exactly(demo_files: dict[str, Path]) -> None:
    net = load_checkpoint(str(DEMO_DIR), device="cpu", dtype="float32").net
    reader = GGUFReader(demo_files["f32"])
    for tensor in reader.tensors:
        engine = layout.engine_name(tensor.name)
        if engine is None:
            assert np.array_equal(tensor.data, np.ones(20, dtype=np.float32))  # default RoPE: every frequency turns
            continue
        expected = net.state_dict()[engine].numpy()
        assert np.array_equal(np.asarray(tensor.data).reshape(expected.shape), expected), tensor.name


def test_the_header_falls_back_to_the_runtime_defaults(demo_files: dict[str, Path], tmp_path: Path) -> None:
    without = rewrite_gguf(demo_files["q8_0"], tmp_path / "no-eb.gguf", drop_keys=tuple(layout.EB_KEYS.values()))
    header = GGUFHeader.read(without)
    assert (header.defaults.max_denoising_steps, header.defaults.t_min, header.defaults.t_max) == (48, 0.4, 0.8)
    assert header.defaults.eos_token_ids == (1, 5, 11)  # <eos>, <turn|>, <|tool_response>
    shipped = GGUFHeader.read(demo_files["q8_0"])
    assert (shipped.defaults.t_min, shipped.defaults.t_max, shipped.defaults.max_denoising_steps) == (0.1, 0.5, 32)


def test_files_that_are_not_diffusiongemma_get_a_clear_error(demo_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="No GGUF file"):
        GGUFHeader.read(tmp_path / "missing.gguf")
    (tmp_path / "text.gguf").write_text("not a gguf")
    with pytest.raises(ConfigurationError, match="not a readable GGUF"):
        GGUFHeader.read(tmp_path / "text.gguf")
    other = rewrite_gguf(demo_files["q8_0"], tmp_path / "llama.gguf", architecture="llama")
    with pytest.raises(ConfigurationError, match=r"'llama' model, not DiffusionGemma.*convert-gguf"):
        GGUFHeader.read(other)
    no_canvas = rewrite_gguf(demo_files["q8_0"], tmp_path / "no-canvas.gguf", drop_keys=(layout.CANVAS_LENGTH,))
    with pytest.raises(ConfigurationError, match=r"diffusion\.canvas_length"):
        GGUFHeader.read(no_canvas)


def test_the_byte_level_tokenizer_reads_back_as_the_checkpoints(demo_files: dict[str, Path]) -> None:
    original = Tokenizer.from_file(str(DEMO_DIR / "tokenizer.json"))
    rebuilt = tokenizer_from_vocab(GGUFHeader.read(demo_files["q8_0"]).vocab)
    for text in TEXTS + PROMPTS:
        ids = original.encode(text, add_special_tokens=False).ids
        assert rebuilt.encode(text, add_special_tokens=False).ids == ids, text
        assert rebuilt.decode(ids, skip_special_tokens=False) == original.decode(ids, skip_special_tokens=False)
        assert rebuilt.decode(ids, skip_special_tokens=True) == original.decode(ids, skip_special_tokens=True)


def sentencepiece_style_tokenizer() -> Tokenizer:
    """A small BPE with byte fallback and '▁' for spaces, the shape of Gemma's tokenizer.json."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|tool_call>", "<tool_call|>"]
    bytes_ = [f"<0x{value:02X}>" for value in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special + bytes_, show_progress=False)
    tokenizer.train_from_iterator(PROMPTS * 20 + ["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    saved = json.loads(tokenizer.to_str())  # the byte tokens are vocabulary, not added tokens, in Gemma's file
    saved["added_tokens"] = [token for token in saved["added_tokens"] if token["content"] in special]
    return Tokenizer.from_str(json.dumps(saved))


def test_a_sentencepiece_style_tokenizer_reads_back_too() -> None:
    original = sentencepiece_style_tokenizer()
    vocab = vocab_from_tokenizer_json(json.loads(original.to_str()), 512)
    assert (vocab.model, vocab.pre) == ("gemma4", "gemma4")
    assert vocab.token_types[vocab.tokens.index("<0x41>")] == 6  # BYTE
    rebuilt = tokenizer_from_vocab(vocab, unk_token_id=vocab.tokens.index("<unk>"))
    for text in TEXTS + PROMPTS:
        ids = original.encode(text, add_special_tokens=False).ids
        assert rebuilt.encode(text, add_special_tokens=False).ids == ids, text
        assert rebuilt.decode(ids) == original.decode(ids)


def test_unsupported_tokenizers_are_refused() -> None:
    word_level = {"model": {"type": "WordLevel", "vocab": {"a": 0}}}
    with pytest.raises(ConfigurationError, match="BPE tokenizers only"):
        vocab_from_tokenizer_json(word_level, 8)
    bare_bpe = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": None}
    with pytest.raises(ConfigurationError, match="neither"):
        vocab_from_tokenizer_json(bare_bpe, 8)


def test_the_network_shape_reads_back_from_the_header(demo_files: dict[str, Path]) -> None:
    config = load_checkpoint(str(DEMO_DIR), device="cpu", dtype="float32").config
    assert text_config(GGUFHeader.read(demo_files["f32"])) == config


async def test_the_torch_engine_runs_the_f32_file_token_for_token(demo_files: dict[str, Path]) -> None:
    """F32 holds the demo's weights exactly, so the torch engine gives torch:demo's answers, seed for seed."""
    options = {"engine": "torch"}
    async with (
        AsyncDiffusionGemma(f"gguf:{demo_files['f32']}", backend_options=options) as on_gguf,
        AsyncDiffusionGemma("torch:demo") as on_torch,
    ):
        for seed, prompt in enumerate(PROMPTS):
            ours, theirs = await on_gguf.generate(prompt, seed=seed), await on_torch.generate(prompt, seed=seed)
            assert ours.text == theirs.text
            assert ours.usage.denoising_steps == theirs.usage.denoising_steps
        assert (await on_gguf.generate(PROMPTS[1], seed=0)).text == "blue green red"


async def test_the_torch_engine_dequantizes_q8_0(demo_files: dict[str, Path]) -> None:
    header = GGUFHeader.read(demo_files["q8_0"])
    backend = create_backend(str(demo_files["q8_0"]), BackendOptions(extra={"engine": "torch"}))
    weight = backend.checkpoint.net.state_dict()["layers.0.mlp.gate_proj.weight"]  # type: ignore[attr-defined]
    tensor = next(t for t in header.reader.tensors if t.name == "blk.0.ffn_gate.weight")
    assert np.array_equal(weight.numpy(), quants.dequantize(tensor.data, GGMLQuantizationType.Q8_0))
    original = load_checkpoint(str(DEMO_DIR), device="cpu", dtype="float32").net.state_dict()
    assert 0 < float((weight - original["layers.0.mlp.gate_proj.weight"]).abs().max()) < 0.01  # quantized, closely
    async with AsyncDiffusionGemma(backend) as client:
        assert (await client.generate(PROMPTS[1], seed=0)).text == "blue green red"


async def test_k_quants_dequantize_into_the_engine(k_quant_file: Path) -> None:
    """Q4_K and Q6_K, what published quants use most, through gguf's dequantizers into the engine's layout."""
    header = GGUFHeader.read(k_quant_file)
    kinds = {tensor.tensor_type for tensor in header.reader.tensors}
    assert {GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K} <= kinds
    backend = create_backend(str(k_quant_file), BackendOptions(extra={"engine": "torch"}))
    state = backend.checkpoint.net.state_dict()  # type: ignore[attr-defined]
    for tensor in header.reader.tensors:
        if tensor.tensor_type in (GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K):
            weight = state[layout.engine_name(tensor.name)]
            assert np.array_equal(weight.numpy(), quants.dequantize(tensor.data, tensor.tensor_type)), tensor.name
            assert 0 < float(weight.abs().max()) < 0.1
    async with AsyncDiffusionGemma(backend) as client:
        generation = await client.generate(PROMPTS[0], seed=0, max_tokens=16)
        assert generation.usage.completion_tokens


def test_the_numpy_sampler_is_the_reference_samplers_maths() -> None:
    """Against the torch engine's own pieces on the same logits: the same argmax and acceptance, the same entropies;
    and its two-level draw (a 512-token block by its mass, then a token in it) follows softmax(logits / t)."""
    vocab, length = 1000, 8
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (length, vocab)).astype(np.float32)
    logits[0, 7] += 25  # one confident position, always accepted
    settings = SamplerSettings(
        max_denoising_steps=10, entropy_bound=2.0, t_min=0.4, t_max=0.8, confidence_threshold=0.005,
        stability_threshold=1,
    )  # fmt: skip
    sampler = NumpyStepSampler(settings, length=length, vocab=vocab, seed=0)
    sampler.start_canvas()
    outcome = sampler.step(logits, 10)
    temperature = LinearTemperatureSchedule(0.4, 0.8, 10).at(10, torch.device("cpu"))
    assert outcome.temperature == pytest.approx(float(temperature))
    scaled = torch.from_numpy(logits)[None] / temperature
    _, entropy = token_distribution(scaled, reference=False)
    accepted = entropy_bound_acceptance(entropy, settings.entropy_bound)
    assert np.array_equal(outcome.argmax, scaled.argmax(-1)[0].numpy())
    assert outcome.accepted_fraction == float(accepted.float().mean())
    assert outcome.mean_entropy == pytest.approx(float(entropy.mean()), rel=1e-5)
    sampler.close()
    # every position accepted, many steps: the draws' frequencies against the distribution
    spread = np.full(vocab, -30.0, dtype=np.float32)
    spread[[3, 100, 511, 512, 513, 700, 999]] = [0.5, 1.0, 0.0, 1.5, -0.5, 0.8, 0.2]  # both sides of a block edge
    everything = dataclasses.replace(settings, entropy_bound=1e9, max_denoising_steps=2**20)
    sampler = NumpyStepSampler(everything, length=length, vocab=vocab, seed=3)
    sampler.start_canvas()
    draws = np.concatenate([sampler.step(np.tile(spread, (length, 1)), 2**20).canvas for _ in range(800)])
    sampler.close()
    expected = torch.softmax(torch.from_numpy(spread) / 0.8, dim=-1).numpy()
    support = expected > 1e-6
    observed = np.bincount(draws, minlength=vocab)
    assert observed[~support].sum() == 0
    chi_square = (((observed - len(draws) * expected)[support]) ** 2 / (len(draws) * expected[support])).sum()
    assert chi_square < 22.5  # 6 degrees of freedom, p = 0.001


def test_options_are_checked_against_the_engine(demo_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError, match="device apply to engine=torch"):
        create_backend(str(demo_files["f32"]), BackendOptions(extra={"device": "cpu"}))
    with pytest.raises(ConfigurationError, match=r"threads apply to engine=llama\.cpp"):
        create_backend(str(demo_files["f32"]), BackendOptions(extra={"engine": "torch", "threads": 2}))
    with pytest.raises(ConfigurationError, match="Known options"):
        create_backend(str(demo_files["f32"]), BackendOptions(extra={"gpu": True}))


def test_the_stock_install_error_names_the_fix() -> None:
    error = LlamaCppUnavailableError(LlamaCppSupport(False, "llama-cpp-python 0.3.36: no DiffusionGemma", "build it"))
    assert isinstance(error, ConfigurationError)
    assert "0.3.36: no DiffusionGemma" in str(error)
    assert "Fix: build it" in str(error)
    assert "-o engine=torch" in str(error)


STOCK_PROBE = textwrap.dedent(
    """
    import sys
    {setup}
    from diffusiongemma_gguf import llama_cpp_support
    support = llama_cpp_support()
    print(support.ready, "|", support.detail, "|", support.fix)
    """
)


@pytest.mark.parametrize(
    ("setup", "detail"),
    [
        ("sys.modules['llama_cpp'] = None", "llama-cpp-python is not installed"),
        ("sys.path.insert(0, sys.argv[1])", "llama-cpp-python 0.3.36: its llama.cpp lacks DiffusionGemma"),
    ],
)
def test_the_probe_tells_a_stock_install(tmp_path: Path, setup: str, detail: str) -> None:
    """A llama-cpp-python whose library lacks the PR's functions (here: the C library stands in for a stock
    libllama, which has none of them either) is reported with the build command, in a fresh interpreter."""
    stock = tmp_path / "llama_cpp"
    stock.mkdir()
    (stock / "__init__.py").write_text("from . import llama_cpp\n__version__ = '0.3.36'\n")
    (stock / "llama_cpp.py").write_text(
        "import ctypes, ctypes.util\n_lib = ctypes.CDLL(ctypes.util.find_library('c'))\n"
    )
    probe = STOCK_PROBE.format(setup=setup)
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True)
    ready, found, fix = (part.strip() for part in result.stdout.split("|"))
    assert ready == "False"
    assert found.startswith(detail)
    assert fix.startswith("diffusiongemma build-llama-cpp")


def test_convert_gguf_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "demo.gguf"
    result = CliRunner().invoke(app, ["convert-gguf", "demo", str(out), "--type", "bf16"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    header = GGUFHeader.read(out)
    assert header.canvas_length == 32
    assert {t.tensor_type for t in header.reader.tensors} == {GGMLQuantizationType.BF16, GGMLQuantizationType.F32}
    bad = CliRunner().invoke(app, ["convert-gguf", str(tmp_path / "nowhere"), str(out)])
    assert bad.exit_code == 1
    assert "No checkpoint folder" in bad.stderr


def llama_tree(root: Path, *, with_pr: bool) -> Path:
    """A folder shaped like a llama.cpp tree: its llama.h declares the PR's functions or not."""
    (root / "include").mkdir(parents=True)
    declaration = "LLAMA_API void llama_diffusion_set_phase(struct llama_model * model, int phase);" if with_pr else ""
    (root / "include" / "llama.h").write_text(f"#pragma once\n{declaration}\n")
    (root / "src").mkdir()
    (root / "src" / "llama.cpp").write_text("int x;\n")
    return root


def test_the_build_takes_only_a_tree_with_the_pr_and_keys_it_by_content(tmp_path: Path) -> None:
    stock = llama_tree(tmp_path / "stock", with_pr=False)
    with pytest.raises(ConfigurationError, match="without PR #24423"):
        build.Tree(stock)
    result = CliRunner().invoke(app, ["build-llama-cpp", str(stock)])
    assert result.exit_code == 1
    assert "without PR #24423" in result.stderr
    tree = llama_tree(tmp_path / "pr", with_pr=True)
    digest = build.Tree(tree).digest()
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert build.Tree(tree).digest() == digest  # git's own files are not sources
    (tree / "src" / "llama.cpp").write_text("int y;\n")
    assert build.Tree(tree).digest() != digest
    archive = tmp_path / "pr.tar.gz"
    with tarfile.open(archive, "w:gz") as packed:
        packed.add(tree, arcname="llama.cpp")
    copied = tmp_path / "copy"
    build.Tree(archive).copy_to(copied)
    assert (copied / "src" / "llama.cpp").read_text() == "int y;\n"
    with pytest.raises(ConfigurationError, match=r"neither a llama\.cpp folder nor a tarball"):
        build.Tree(tmp_path / "nowhere")
