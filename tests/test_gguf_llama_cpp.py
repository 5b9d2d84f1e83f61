"""The gguf: backend on a real llama.cpp with PR #24423 (llama-cpp-python built by `diffusiongemma build-llama-cpp`;
`.ci/run` builds it from ../shared/vendor when that is there). Elsewhere these tests skip, saying why.

Files are the demo model converted (F32, Q8_0) and a tiny random model with Q4_K/Q6_K blocks."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

pytest.importorskip("gguf")
pytest.importorskip("torch")

from diffusiongemma_gguf import GGUFHeader, create_backend, llama_cpp_support
from diffusiongemma_gguf._llama import LlamaCppModel
from diffusiongemma_sdk import APITimeoutError, AsyncDiffusionGemma, BackendOptions, InvalidRequestError
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch.demo import DEMO_DIR
from diffusiongemma_torch.demo.tasks import add, add_task, reverse_task, sort_task
from tests.support.gguf_fidelity import PHASES, logits_side_by_side, relative_difference
from tests.support.gguf_files import rewrite_gguf

SUPPORT = llama_cpp_support()
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not SUPPORT.ready, reason=f"{SUPPORT.detail}; build it with: {SUPPORT.fix}"),
]


PROMPTS = ["Sort these numbers: 42 7 19 88 3 56", "Reverse these words: red green blue"]
NEVER_CONFIDENT = {"confidence_threshold": 1e-12, "max_denoising_steps": 400}


def load(path: Path, **options: object) -> LlamaCppModel:
    header = GGUFHeader.read(path)
    return LlamaCppModel(
        path, canvas_length=header.canvas_length, context=int(options.get("context", header.context_length)),
        threads=2, prefill_chunk=int(options.get("prefill_chunk", 512)),
    )  # fmt: skip


def test_llama_cpp_tokenizes_as_the_checkpoint(demo_files: dict[str, Path]) -> None:
    model, chat = load(demo_files["f32"]), ChatFormat.from_directory(DEMO_DIR)
    rng = random.Random(0)
    tasks = [sort_task(rng), reverse_task(rng), add_task(rng), add_task(rng, answered_call=True)]
    texts = [chat.render(t.messages, tools=t.tools, thinking=thinking) for t in tasks for thinking in (False, True)]
    texts += ["ünïcödé — 日本語 🙂", "  two  spaces\tand\n\nnewlines ", "<|tool_call>call:add{a:1,b:2}<tool_call|>"]
    for text in texts:
        ids = chat.encode(text)
        assert model.tokenize(text) == ids, text
        assert model.decode(ids) == chat.decode(ids)
        assert model.decode(ids, skip_special_tokens=True) == chat.decode(ids, skip_special_tokens=True)
    model.close()


@pytest.mark.parametrize("chunk", [512, 7])
def test_prefill_denoise_and_commit_logits_are_the_torch_engines(demo_files: dict[str, Path], chunk: int) -> None:
    """F32, same tokens: every phase within 1e-3 of the torch engine's largest logit (measured about 4e-5), the
    same argmax everywhere; a prompt prefilled in chunks of 7 gives the same."""
    model = load(demo_files["f32"], prefill_chunk=chunk)
    net = load_checkpoint(str(DEMO_DIR), device="cpu", dtype="float32").net
    chat = ChatFormat.from_directory(DEMO_DIR)
    prompt = chat.encode(chat.render(reverse_task(random.Random(1)).messages, tools=[], thinking=True))
    assert len(prompt) > 3 * 7
    pairs = logits_side_by_side(model, net, prompt)
    assert list(pairs) == list(PHASES)
    for phase, (ours, theirs) in pairs.items():
        assert relative_difference(ours, theirs) < 1e-3, phase
        assert np.array_equal(ours.argmax(-1), theirs.argmax(-1)), phase
    model.close()


async def test_answers_are_torch_demos_seed_for_seed(demo_files: dict[str, Path]) -> None:
    """With sampling='torch' the sampler is the torch engine's, drawing the same random numbers."""
    async with (
        AsyncDiffusionGemma(f"gguf:{demo_files['f32']}", backend_options={"sampling": "torch"}) as on_llama,
        AsyncDiffusionGemma("torch:demo") as on_torch,
    ):
        for seed, prompt in enumerate(PROMPTS * 2):
            ours, theirs = await on_llama.generate(prompt, seed=seed), await on_torch.generate(prompt, seed=seed)
            assert (ours.text, ours.usage.denoising_steps) == (theirs.text, theirs.usage.denoising_steps)
        thought = await on_llama.generate("What is 12 + 30?", tools=[add], thinking=True, seed=0)
        assert thought.reasoning
        assert [(call.name, call.arguments) for call in thought.tool_calls] == [("add", {"a": 12, "b": 30})]
        reference = {"sampler": "reference"}
        ours = await on_llama.generate(PROMPTS[0], seed=4, diffusion=reference)
        assert ours.text == (await on_torch.generate(PROMPTS[0], seed=4, diffusion=reference)).text


async def test_the_default_numpy_sampler_answers(demo_files: dict[str, Path]) -> None:
    async with AsyncDiffusionGemma(f"gguf:{demo_files['f32']}") as client:
        assert (await client.generate(PROMPTS[1], seed=0)).text == "blue green red"
        first = await client.generate(PROMPTS[0], seed=9)
        assert (await client.generate(PROMPTS[0], seed=9)).text == first.text
        with pytest.raises(InvalidRequestError, match="takes the torch sampler"):
            await client.generate(PROMPTS[0], diffusion={"sampler": "reference"})


async def test_q8_0_answers_the_demo_tasks(demo_files: dict[str, Path]) -> None:
    async with AsyncDiffusionGemma(f"gguf:{demo_files['q8_0']}") as client:
        assert (await client.generate(PROMPTS[1], seed=0)).text == "blue green red"


def test_k_quants_agree_between_llama_cpp_and_the_torch_engine(k_quant_file: Path, tmp_path: Path) -> None:
    """Q4_K and Q6_K blocks dequantized by gguf-py into the torch engine, against llama.cpp: on the same values
    written as F32 the two networks agree to 1e-2 (layout and dequantization right); on the K-quant file itself
    llama.cpp multiplies against 8-bit activations, so its logits drift (this random network amplifies it) but keep
    the same argmax and correlate above 0.95 (a misread block would not correlate at all)."""
    backend = create_backend(str(k_quant_file), BackendOptions(extra={"engine": "torch"}))
    net = backend.checkpoint.net  # type: ignore[attr-defined]

    def as_f32(name: str, data: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
        if qtype in (GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K):
            return quants.dequantize(data, qtype), GGMLQuantizationType.F32
        return data, qtype

    same_values = rewrite_gguf(k_quant_file, tmp_path / "dequantized.gguf", tensor=as_f32)
    prompt = list(range(2, 40))
    for path, agreement in ((same_values, 1e-2), (k_quant_file, None)):
        model = load(path)
        for phase, (ours, theirs) in logits_side_by_side(model, net, prompt).items():
            assert np.array_equal(ours.argmax(-1), theirs.argmax(-1)), (path.name, phase)
            if agreement is not None:
                assert relative_difference(ours, theirs) < agreement, phase
            else:
                assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.95, phase
        model.close()


async def test_requests_are_served_one_at_a_time(demo_files: dict[str, Path]) -> None:
    """The model's phase and self-conditioning input are global: concurrent requests wait their turn, and each
    gets the answer it gets alone."""
    async with AsyncDiffusionGemma(f"gguf:{demo_files['f32']}") as client:
        alone = [(await client.generate(p, seed=s)).text for s, p in enumerate(PROMPTS * 2)]
        together: list[str] = [""] * len(alone)

        async def ask(index: int) -> None:
            together[index] = (await client.generate((PROMPTS * 2)[index], seed=index)).text

        async with anyio.create_task_group() as group:
            for index in range(len(alone)):
                group.start_soon(ask, index)
        assert together == alone


async def test_a_cancellation_stops_the_work_within_one_step(demo_files: dict[str, Path]) -> None:
    async with AsyncDiffusionGemma(f"gguf:{demo_files['f32']}") as client:
        backend = client.backend
        started = time.perf_counter()
        with pytest.raises(APITimeoutError):
            await client.generate(PROMPTS[0], timeout=0.3, max_tokens=64, diffusion=NEVER_CONFIDENT)
        assert time.perf_counter() - started < 2  # hundreds of steps were asked for; one step is milliseconds
        assert not backend._engine.locked()  # type: ignore[attr-defined]
        assert (await client.generate(PROMPTS[1], seed=0)).text == "blue green red"


async def test_requests_too_big_for_the_context_are_refused(demo_files: dict[str, Path]) -> None:
    async with AsyncDiffusionGemma(f"gguf:{demo_files['f32']}", backend_options={"context": 96}) as client:
        with pytest.raises(InvalidRequestError, match="exceeds the model's context of 96"):
            await client.generate("Sort these numbers: " + " ".join(["7"] * 80))
        with pytest.raises(InvalidRequestError, match="max_tokens=4000 does not fit"):
            await client.generate(PROMPTS[0], max_tokens=4000)
        assert (await client.generate(PROMPTS[1], seed=0)).text == "blue green red"


ABUSE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from diffusiongemma_gguf._llama import LlamaCppModel
    model = LlamaCppModel(Path(sys.argv[1]), canvas_length=32, context=128, threads=1, prefill_chunk=16)
    canvas = np.zeros(32, dtype=np.int64)
    attempts = {
        "denoise before any prefill": lambda: model.denoise(canvas, 5, None, 0.5),
        "tokens past the context": lambda: model.prefill([2] * 200, 0, 232),
        "a prefill that leaves a gap": lambda: model.prefill([2] * 8, 30, 232),
        "a prefill beyond its store": lambda: model.prefill([2] * 8, 0, 4),
        "a token outside the vocabulary": lambda: model.prefill([2, 5000], 0, 64),
        "an empty prefill": lambda: model.prefill([], 0, 64),
        "a canvas of the wrong size": lambda: model.denoise(np.zeros(40, dtype=np.int64), 5, None, 0.5),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except (RuntimeError, ValueError) as error:
            print(name, "->", type(error).__name__)
        else:
            raise SystemExit(f"{name} was not refused")
    model.prefill([2] * 40, 0, 40 + 32)  # chunked by 16, then
    model.denoise(canvas, 40, None, 0.5)
    try:
        model.denoise(canvas, 80, None, 0.5)
    except (RuntimeError, ValueError) as error:
        print("a canvas past the store ->", type(error).__name__)
    model.close()
    print("survived")
    """
)


def test_no_input_makes_llama_cpp_abort_the_process(demo_files: dict[str, Path]) -> None:
    """Misuse refused before llama.cpp sees it. Some would abort the process in a GGML_ASSERT (a canvas step before
    any prompt is stored: measured, SIGABRT; a canvas of another size than the self-conditioning input), others
    would compute on positions never written. A fresh interpreter shows every one refused with a Python error and
    the process alive."""
    result = subprocess.run(
        [sys.executable, "-c", ABUSE, str(demo_files["f32"])], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("->") == 8
    assert result.stdout.strip().endswith("survived")
