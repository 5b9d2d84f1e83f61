"""The `torch:` backend through the public client: loading, chat, per-request settings, streaming, cancellation."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import anyio
import pytest
import torch

pytest.importorskip("transformers")

from diffusiongemma_sdk import (
    AsyncDiffusionGemma,
    CanvasEvent,
    ConfigurationError,
    DenoiseStepEvent,
    DiffusionParams,
    DoneEvent,
    ImagePart,
    InvalidRequestError,
    Message,
    UnsupportedParameterError,
)
from diffusiongemma_sdk._gemma4 import parse_gemma4
from diffusiongemma_sdk._local.progress import RequestProgress
from diffusiongemma_torch import _admission as admission
from diffusiongemma_torch import _checkpoint as checkpoint_module
from diffusiongemma_torch._backend import TorchBackend
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch.demo import DEMO_DIR
from tests.support.tiny_checkpoint import TinySpec, build_tiny_checkpoint, stop_token_ids

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), TinySpec(vocab=256, canvas=16))


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wide enough that one denoising step takes visible time on a CPU."""
    spec = TinySpec(vocab=4096, hidden=256, canvas=128, experts=8)
    return build_tiny_checkpoint(tmp_path_factory.mktemp("slow"), spec)


async def test_generate_trims_to_max_tokens_and_ignores_checkpoint_max_new_tokens(tiny: Path) -> None:
    async with AsyncDiffusionGemma(f"torch:{tiny}") as client:
        assert isinstance(client.backend, TorchBackend)
        results = [await client.generate("Sort these numbers: 3 1 2", max_tokens=40, seed=s) for s in range(6)]
    for generation in results:
        usage = generation.usage
        assert usage.completion_tokens <= 40
        assert generation.finish_reason in ("stop", "length")
        if generation.finish_reason == "length":  # generation_config's max_new_tokens (16) was not inherited
            assert usage.completion_tokens == 40
            assert usage.canvases == 3
        assert usage.prompt_tokens > 5
        assert usage.denoising_steps is not None
        assert usage.canvases is not None
        assert usage.denoising_steps >= usage.canvases
        assert usage.wall_s is not None
        assert usage.ttft_s is not None
        assert generation.backend == f"torch:{tiny}"
    assert {g.finish_reason for g in results} == {"stop", "length"}


async def test_requests_must_fit_the_context_window(tmp_path: Path) -> None:
    small = build_tiny_checkpoint(tmp_path, TinySpec(vocab=256, canvas=16, context=64))
    async with AsyncDiffusionGemma(f"torch:{small}") as client:
        with pytest.raises(InvalidRequestError, match=r"exceeds the model.s context of 64 tokens\. Shorten"):
            await client.generate("Sort these numbers: " + " ".join(["1"] * 60))
        with pytest.raises(InvalidRequestError, match=r"max_tokens=64 does not fit") as refused:
            await client.generate("Sort these numbers: 3 1 2", max_tokens=64)
        stated = re.search(r"at most (\d+)", str(refused.value))
        assert stated is not None
        room = int(stated.group(1))
        fitting = await client.generate("Sort these numbers: 3 1 2", max_tokens=room, seed=0)
        default = await client.generate("Sort these numbers: 3 1 2", seed=0)  # the default shrinks to the room
    for generation in (fitting, default):
        assert generation.usage.prompt_tokens + 16 * (generation.usage.canvases or 0) <= 64
        assert generation.usage.completion_tokens <= room


async def test_a_context_too_big_for_free_memory_is_refused_before_any_work(tmp_path: Path) -> None:
    """A billion-token context fits the model's window but not this machine: a clear error, not an allocation."""
    huge_window = build_tiny_checkpoint(tmp_path, TinySpec(vocab=256, canvas=16, context=2**31))
    async with AsyncDiffusionGemma(f"torch:{huge_window}") as client:
        started = time.monotonic()
        with pytest.raises(InvalidRequestError, match=r"needs about [\d.]+ GiB .* GiB is free\. Lower max_tokens"):
            await client.generate("Sort these numbers: 3 1 2", max_tokens=2**30)
        assert time.monotonic() - started < 5
        generation = await client.generate("Sort these numbers: 3 1 2", max_tokens=32, seed=0)
    assert generation.usage.completion_tokens <= 32


def test_request_memory_counts_what_the_cache_holds(tiny: Path) -> None:
    """The estimate's KV part is exactly what the engine's cache buffers hold for a prompt longer than the window;
    the request adds the largest layer's keys and values expanded per query head, and the prefill masks."""
    loaded = checkpoint_module.load_checkpoint(str(tiny))
    net, tokens = loaded.net, 50
    cache = net.new_cache(1, capacity=tokens, room=min(admission.PREFILL_CHUNK, tokens))
    net.encode(torch.randint(3, 256, (1, tokens)), cache)
    held = sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values))
    assert admission.cache_bytes(net.config, tokens, torch.float32) == held
    largest_layer = max(k.numel() * 2 * 4 for k in cache.keys)
    groups = net.config.num_heads // min(net.config.kv_heads)
    masks = tokens * tokens * (2 + 4)  # two boolean masks, and SDPA's float copy of one
    estimate = admission.request_bytes(net.config, tokens, torch.float32, prefill_chunk=tokens)
    assert held + masks < estimate <= held + largest_layer * groups + masks


async def test_seed_makes_runs_reproducible(tiny: Path) -> None:
    async with AsyncDiffusionGemma(f"torch:{tiny}") as client:
        first = await client.generate("What is 1 + 2 ?", seed=11, max_tokens=32)
        again = await client.generate("What is 1 + 2 ?", seed=11, max_tokens=32)
        other = await client.generate("What is 1 + 2 ?", seed=12, max_tokens=32)
    assert first.text == again.text
    assert first.usage == again.usage.model_copy(update={"wall_s": first.usage.wall_s, "ttft_s": first.usage.ttft_s})
    assert other.text != first.text


async def test_reference_sampler_through_the_client_matches_transformers_generate(tiny: Path) -> None:
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    async with AsyncDiffusionGemma(f"torch:{tiny}") as client:
        params = DiffusionParams(max_denoising_steps=6, entropy_bound=0.3, sampler="reference")
        generation = await client.generate("Reverse these words: red blue", seed=5, max_tokens=48, diffusion=params)
        backend = client.backend
        assert isinstance(backend, TorchBackend)
        prompt = backend.chat.encode(
            backend.chat.render(
                [Message(role="user", content="Reverse these words: red blue")], tools=[], thinking=None
            )
        )
    reference = DiffusionGemmaForBlockDiffusion.from_pretrained(tiny).eval()
    torch.manual_seed(5)
    out = reference.generate(
        torch.tensor([prompt]), max_new_tokens=48, max_denoising_steps=6,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.3), eos_token_id=stop_token_ids(tiny),
    )  # fmt: skip
    tokens = out.sequences[0, len(prompt) :].tolist()
    stops = set(stop_token_ids(tiny))
    end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
    expected = parse_gemma4(backend.chat.decode(tokens[:end]))
    assert generation.usage.completion_tokens == end
    assert (generation.text, generation.reasoning) == (expected.text, expected.reasoning)


async def test_every_diffusion_param_works_per_request(tiny: Path) -> None:
    async with AsyncDiffusionGemma(f"torch:{tiny}") as client:
        capped = await client.generate("q", seed=1, max_tokens=16, diffusion={"max_denoising_steps": 3})
        assert capped.usage.denoising_steps == 3  # random weights never converge early
        wide = client.stream(
            "q", seed=1, max_tokens=16, diffusion={"entropy_bound": 50.0, "max_denoising_steps": 2}, drafts=True
        )
        async with wide as stream:
            fractions = [e.accepted_fraction async for e in stream if isinstance(e, DenoiseStepEvent)]
        assert fractions
        assert min(fractions) > 0.5
        eager = await client.generate(
            "q", seed=1, max_tokens=16,
            diffusion={"stability_threshold": 0, "confidence_threshold": 100.0, "t_min": 0.1, "t_max": 2.0},
        )  # fmt: skip
        assert eager.usage.denoising_steps == 1  # always stable and "confident": stops after one step


def with_template(checkpoint: Path, folder: Path, template: str) -> Path:
    """A copy of `checkpoint` with another chat template."""
    shutil.copytree(checkpoint, folder)
    (folder / "chat_template.jinja").write_text(template)
    return folder


async def test_odd_request_values_work_or_are_invalid_requests(tiny: Path, tmp_path: Path) -> None:
    """What a client can send never fails inside the engine (a server would answer it with a 500)."""
    async with AsyncDiffusionGemma(f"torch:{tiny}") as client:
        huge = await client.generate("q", seed=2**70, max_tokens=16, diffusion={"stability_threshold": 10**18})
        assert huge.usage.completion_tokens <= 16  # the seed wraps; a history longer than the steps is not allocated
        wrapped = await client.generate("q", seed=2**70 % 2**64, max_tokens=16)
        assert wrapped.text == (await client.generate("q", seed=2**70, max_tokens=16)).text
        with pytest.raises(InvalidRequestError, match="t_min"):  # above the checkpoint's t_max
            await client.generate("q", diffusion={"t_min": 50.0})
        with pytest.raises(InvalidRequestError, match="unpaired surrogate"):
            await client.generate("lone \udc2c surrogate")
    refusing = with_template(tiny, tmp_path / "refusing", "{{ raise_exception('no system turns') }}")
    async with AsyncDiffusionGemma(f"torch:{refusing}") as client:
        with pytest.raises(InvalidRequestError, match="refused the conversation: no system turns"):
            await client.generate("q")


async def test_stream_events_and_stream_every(tiny: Path) -> None:
    async with AsyncDiffusionGemma(f"torch:{tiny}") as client:
        async with client.stream("q", seed=3, max_tokens=32) as stream:
            plain = [event async for event in stream]  # no drafts unless asked
        async with client.stream("q", seed=3, max_tokens=32, drafts=True) as stream:
            events = [event async for event in stream]
    assert [e for e in events if not isinstance(e, DenoiseStepEvent)][:-2] == plain[:-2]  # usage times differ
    assert not any(isinstance(e, DenoiseStepEvent) for e in plain)
    steps = [e for e in events if isinstance(e, DenoiseStepEvent)]
    canvases = [e for e in events if isinstance(e, CanvasEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert steps
    assert steps[0].step == 1
    assert all(isinstance(e.draft_text, str) for e in steps)
    assert [c.canvas_index for c in canvases] == list(range(len(canvases)))
    assert sum(c.steps or 0 for c in canvases) == done.generation.usage.denoising_steps == len(steps)
    every_second = AsyncDiffusionGemma(f"torch:{tiny}", backend_options={"stream_every": 2})
    async with every_second as client, client.stream("q", seed=3, max_tokens=32, drafts=True) as stream:
        halved = [e async for e in stream if isinstance(e, DenoiseStepEvent)]
    assert [e.step for e in halved] == [e.step for e in steps if e.step % 2 == 0]


async def test_event_loop_keeps_ticking_during_a_generation(slow: Path) -> None:
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.perf_counter()
        while True:
            await anyio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with AsyncDiffusionGemma(f"torch:{slow}") as client, anyio.create_task_group() as group:
        group.start_soon(heartbeat)
        started = time.perf_counter()
        await client.generate("q", seed=0, max_tokens=256, diffusion={"max_denoising_steps": 24})
        elapsed = time.perf_counter() - started
        group.cancel_scope.cancel()
    assert elapsed > 0.2
    assert len(gaps) > 10
    assert max(gaps) < 0.2


async def test_cancelling_stops_within_one_step_and_frees_the_engine(slow: Path) -> None:
    async with AsyncDiffusionGemma(f"torch:{slow}") as client:
        backend = client.backend
        assert isinstance(backend, TorchBackend)
        timing = time.perf_counter()
        await client.generate("q", seed=0, max_tokens=128, diffusion={"max_denoising_steps": 1})
        one_step = time.perf_counter() - timing
        seen = 0
        with anyio.move_on_after(30) as scope:
            async with client.stream(
                "q", seed=0, max_tokens=1024, diffusion={"max_denoising_steps": 48}, drafts=True
            ) as stream:
                async for event in stream:
                    if isinstance(event, DenoiseStepEvent):
                        seen += 1
                        if seen == 2:
                            cancelled_at = time.perf_counter()
                            scope.cancel()
        stopped_after = time.perf_counter() - cancelled_at
        assert seen == 2
        assert stopped_after < 2 * one_step + 0.5
        assert backend._scheduler.worker.borrowed_tokens == 0
        with anyio.fail_after(5 * one_step + 5):  # the engine is free for the next request at once
            assert (await client.generate("q", seed=0, max_tokens=16, diffusion={"max_denoising_steps": 1})).usage


async def test_images_and_bad_options_are_refused_clearly(tiny: Path) -> None:
    async with AsyncDiffusionGemma(f"torch:{tiny}") as client:
        with pytest.raises(UnsupportedParameterError, match="images"):
            await client.generate([Message(role="user", content=[ImagePart(url="data:image/png;base64,AA")])])
    with pytest.raises(ConfigurationError, match="Known options: device"):
        AsyncDiffusionGemma(f"torch:{tiny}", backend_options={"gpu": True})


async def test_chat_template_renders_thinking_and_tools(tiny: Path) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    async with AsyncDiffusionGemma(f"torch:{tiny}") as client:
        backend = client.backend
        assert isinstance(backend, TorchBackend)
        from diffusiongemma_sdk import Tool

        text = backend.chat.render(
            [Message(role="user", content="What is 1 + 2 ?")], tools=[Tool.from_function(add)], thinking=True
        )
        assert text.startswith("<bos><|turn>system\n<|think|>\n")
        assert "<|tool>declaration:add" in text
        assert text.endswith("<|turn>model\n")
        assert "<|turn> user What is 1 + 2 ? <turn|>" in backend.chat.decode(backend.chat.encode(text))


def test_loading_errors(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="huggingface-cli download google/nope"):
        AsyncDiffusionGemma("torch:google/nope")
    with pytest.raises(ConfigurationError, match=r"no config\.json"):
        AsyncDiffusionGemma(f"torch:{tmp_path}")
    monkeypatch.setattr(admission, "_available_bytes", lambda device: 1024)
    with pytest.raises(ConfigurationError, match=r"needs about .* GiB but .* GiB is free"):
        AsyncDiffusionGemma(f"torch:{tiny}")


def test_hub_id_from_the_local_cache(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "models--acme--tiny-diffusiongemma"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / "abc123").symlink_to(tiny)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    client = AsyncDiffusionGemma("torch:acme/tiny-diffusiongemma")
    assert client.backend.name == "torch:acme/tiny-diffusiongemma"


def test_pad_tokens_before_the_stop_are_counted_but_not_shown() -> None:
    """A small model can put `<pad>` before its stop token: the tokens count in usage, the text does not show them."""
    chat = ChatFormat.from_directory(DEMO_DIR)
    pad, stop = chat.token_id("<pad>"), chat.token_id("<turn|>")
    assert pad is not None
    assert stop is not None
    answer = [*chat.encode("4 9"), pad, pad, *chat.encode(" 17"), stop]
    run = RequestProgress(
        backend="torch:demo", chat=chat, prompt_tokens=5, max_tokens=64, stop_tokens={stop},
        stop_strings=[], pad_token_id=pad,
    )  # fmt: skip
    run.commit(answer + [pad] * (32 - len(answer)), steps=3, decoder_passes=3)
    done = run.final_events()[-1]
    assert isinstance(done, DoneEvent)
    generation = done.generation
    assert generation.text == "4 9 17"
    assert generation.finish_reason == "stop"
    assert generation.usage.completion_tokens == len(answer) - 1  # pads counted, the stop token not
