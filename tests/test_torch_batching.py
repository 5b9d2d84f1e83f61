"""Requests denoised together (`max_batch`): each gets what it gets alone, with the demo model through the engine
and through the public client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import torch

pytest.importorskip("transformers")

from diffusiongemma_sdk import AsyncDiffusionGemma, CanvasEvent, DenoiseStepEvent, DoneEvent, Generation, Message
from diffusiongemma_sdk._local.progress import RequestProgress
from diffusiongemma_torch import _admission as admission
from diffusiongemma_torch import _scheduler as scheduler_module
from diffusiongemma_torch._backend import TorchBackend
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch._engine import CanvasCommitted, DenoiseStep, generate_canvases
from diffusiongemma_torch._scheduler import Batch, Scheduler
from diffusiongemma_torch.demo import DEMO_DIR
from diffusiongemma_torch.demo.tasks import add
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

PROMPTS = [
    "Reverse these words: red green blue yellow cat dog",
    "Sort these numbers: 17 4 9",
    "What is 12 + 30?",
    "Sort these numbers: " + " ".join(str(n) for n in range(70, 30, -1)),  # two canvases
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def encoded(chat: ChatFormat, text: str) -> list[int]:
    return chat.encode(chat.render([Message(role="user", content=text)], tools=[], thinking=False))


def run_rows(
    prompts: list[list[int]], seeds: list[int], limits: list[int], *, reference: bool
) -> tuple[list[dict[str, Any]], list[int]]:
    """Each row's committed tokens, steps per canvas, decoder passes and steps it was denoised at; and the batch's
    steps per canvas."""
    checkpoint = load_checkpoint(str(DEMO_DIR))
    settings = checkpoint.defaults.resolve(None)
    settings = type(settings)(**{**settings.__dict__, "reference": reference})
    width = max(map(len, prompts))
    padded = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    valid = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    rows: list[dict[str, Any]] = [{"tokens": [], "steps": [], "passes": 0, "denoised": 0} for _ in prompts]
    batch_steps: list[int] = []
    reports: Iterator[DenoiseStep | CanvasCommitted] = generate_canvases(
        checkpoint.net,
        padded,
        settings,
        max_canvases=limits,
        stop_token_ids=checkpoint.defaults.eos_token_ids,
        pad_token_id=checkpoint.defaults.pad_token_id,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        prompt_valid=valid,
    )
    for report in reports:
        if isinstance(report, CanvasCommitted):
            batch_steps.append(int(report.steps.max()))
        for i, row in enumerate(rows):
            if isinstance(report, DenoiseStep):
                row["denoised"] += int(report.denoised[i])
            elif report.steps[i]:  # rows that finished earlier take no steps and add nothing
                row["tokens"] += report.tokens[i].tolist()
                row["steps"].append(int(report.steps[i]))
                row["passes"] = int(report.decoder_passes[i])
    return rows, batch_steps


@pytest.mark.parametrize("reference", [False, True])
def test_each_row_of_a_batch_gets_what_its_prompt_gets_alone(reference: bool) -> None:
    """Per-row generators, canvas limits and early stops: a row's tokens, steps and passes are its solo run's."""
    chat = ChatFormat.from_directory(DEMO_DIR)
    prompts = [encoded(chat, text) for text in PROMPTS]
    seeds, limits = [11, 22, 33, 44], [1, 1, 1, 2]
    together, batch_steps = run_rows(prompts, seeds, limits, reference=reference)
    for i, prompt in enumerate(prompts):
        alone, _ = run_rows([prompt], [seeds[i]], [limits[i]], reference=reference)
        assert together[i] == alone[0]
    assert len({row["passes"] for row in together}) > 1  # rows stopped at their own steps, not the slowest row's
    # the second canvas is the long list's alone: the finished rows are not denoised, nor waited for
    assert len(together[3]["steps"]) == 2
    assert batch_steps[1] == together[3]["steps"][1]


def recording_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch the backend starts (the real engine still runs)."""
    sizes: list[int] = []

    def recorded(net: Any, prompt: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        sizes.append(prompt.shape[0])
        return generate_canvases(net, prompt, *args, **kwargs)

    monkeypatch.setattr(scheduler_module, "generate_canvases", recorded)
    return sizes


async def solo_answers(**request: Any) -> list[Generation]:
    async with AsyncDiffusionGemma("torch:demo") as client:
        return [await client.generate(text, seed=i, **request) for i, text in enumerate(PROMPTS)]


async def run_together(backend: TorchBackend, jobs: list[Callable[[], Awaitable[None]]]) -> None:
    """Start the jobs while the engine is held, so that all of them are waiting when it frees."""
    async with anyio.create_task_group() as group, backend._scheduler.engine:
        for job in jobs:
            group.start_soon(job)
        await wait_until(lambda: len(backend._scheduler.waiting) == len(jobs), timeout=30)


def same_generation(got: Generation | None, want: Generation) -> None:
    assert got is not None
    assert (got.text, got.reasoning, got.finish_reason) == (want.text, want.reasoning, want.finish_reason)
    calls = [[call.model_dump(exclude={"id"}) for call in g.tool_calls] for g in (got, want)]  # ids are random
    assert calls[0] == calls[1]
    timing = {"ttft_s", "wall_s"}
    assert got.usage.model_dump(exclude=timing) == want.usage.model_dump(exclude=timing)


async def test_waiting_requests_share_a_batch_and_each_gets_its_own_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = await solo_answers(tools=[add])
    sizes = recording_batches(monkeypatch)
    answers: list[Generation | None] = [None] * len(PROMPTS)
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 8}) as client:
        assert isinstance(client.backend, TorchBackend)
        assert client.capabilities.max_concurrency == 8

        def one(i: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                answers[i] = await client.generate(PROMPTS[i], seed=i, tools=[add])

            return job

        await run_together(client.backend, [one(i) for i in range(len(PROMPTS))])
    assert sizes == [len(PROMPTS)]
    for got, want in zip(answers, expected, strict=True):
        same_generation(got, want)
    assert answers[2] is not None
    assert answers[2].tool_calls[0].arguments == {"a": 12, "b": 30}


async def test_a_stream_in_a_batch_sees_its_own_steps_and_a_reader_leaving_holds_up_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = await solo_answers()
    sizes = recording_batches(monkeypatch)
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 4}) as client:
        backend = client.backend
        assert isinstance(backend, TorchBackend)
        streamed: dict[int, tuple[int, Generation]] = {}

        def read(i: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                drafts = 0
                async with client.stream(PROMPTS[i], seed=i, drafts=True) as stream:
                    async for event in stream:
                        if isinstance(event, DenoiseStepEvent):
                            drafts += 1
                            if i == 0:
                                return  # this reader leaves at its first draft
                        if isinstance(event, DoneEvent):
                            streamed[i] = (drafts, event.generation)

            return job

        await run_together(backend, [read(i) for i in range(len(PROMPTS))])
        assert backend._scheduler.running is None  # the engine is free
        assert sizes == [len(PROMPTS)]
        assert sorted(streamed) == [1, 2, 3]
        for i, (drafts, generation) in streamed.items():
            same_generation(generation, expected[i])
            assert drafts == generation.usage.denoising_steps  # a draft for each of its own steps, no other row's
        same_generation(await client.generate(PROMPTS[1], seed=1), expected[1])


async def test_requests_with_different_diffusion_settings_run_in_separate_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes = recording_batches(monkeypatch)
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 4}) as client:
        assert isinstance(client.backend, TorchBackend)

        def one(steps: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                await client.generate(PROMPTS[0], seed=0, diffusion={"max_denoising_steps": steps})

            return job

        await run_together(client.backend, [one(8), one(16), one(8)])
    assert sizes == [2, 1]


async def test_a_batch_takes_only_the_requests_that_fit_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = recording_batches(monkeypatch)
    monkeypatch.setattr(scheduler_module, "batch_fits", lambda config, tokens, batch, dtype, device: batch <= 2)
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 8}) as client:
        assert isinstance(client.backend, TorchBackend)

        def one(i: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                await client.generate(PROMPTS[i], seed=i)

            return job

        await run_together(client.backend, [one(i) for i in range(3)])
    assert sizes == [2, 1]


def test_batch_memory_grows_with_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_checkpoint(str(DEMO_DIR)).config
    per_row = 2 * admission.request_bytes(config, 100, torch.float32, admission.PREFILL_CHUNK)
    per_row += 6 * config.canvas_length * config.vocab_size * 4
    monkeypatch.setattr(admission, "_available_bytes", lambda device: 3 * per_row)
    cpu = torch.device("cpu")
    assert admission.batch_fits(config, 100, 3, torch.float32, cpu)
    assert not admission.batch_fits(config, 100, 4, torch.float32, cpu)


async def test_a_request_cancelled_by_asyncio_inside_a_step_loses_nothing_for_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`task.cancel()` (what `asyncio.wait_for` does) passes through anyio's shields. Cancelling the task that is
    stepping the batch, while the step runs, must still deliver that step to every other request."""
    expected = await solo_answers()
    loop = asyncio.get_running_loop()
    in_step = asyncio.Event()
    stepper: list[asyncio.Task[Any] | None] = []  # the task behind each step
    original_step, original_batch_step = Scheduler._step, Batch.step

    async def traced_step(self: Scheduler, batch: Batch) -> None:
        stepper.append(asyncio.current_task())
        await original_step(self, batch)

    def slow_step(self: Batch) -> None:
        if len(stepper) == 1:  # the batch's first step, in which every row gets a draft
            loop.call_soon_threadsafe(in_step.set)
            time.sleep(0.3)  # the cancellation lands while the worker thread runs the step
        original_batch_step(self)

    monkeypatch.setattr(Scheduler, "_step", traced_step)
    monkeypatch.setattr(Batch, "step", slow_step)
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 4}) as client:
        backend = client.backend
        assert isinstance(backend, TorchBackend)

        async def read(i: int) -> tuple[int, Generation]:
            drafts = 0
            async with client.stream(PROMPTS[i], seed=i, drafts=True) as stream:
                async for event in stream:
                    drafts += isinstance(event, DenoiseStepEvent)
                    if isinstance(event, DoneEvent):
                        return drafts, event.generation
            raise AssertionError("no done event")

        async with backend._scheduler.engine:
            tasks = [asyncio.ensure_future(read(i)) for i in range(len(PROMPTS))]
            await wait_until(lambda: len(backend._scheduler.waiting) == len(PROMPTS), timeout=30)
        await in_step.wait()
        cancelled = stepper[0]
        assert cancelled in tasks
        cancelled.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await wait_until(lambda: backend._scheduler.running is None, timeout=30)
    for task, outcome, want in zip(tasks, outcomes, expected, strict=True):
        if task is cancelled:
            assert isinstance(outcome, asyncio.CancelledError)
            continue
        assert not isinstance(outcome, BaseException), outcome
        drafts, generation = outcome
        same_generation(generation, want)
        assert drafts == generation.usage.denoising_steps


async def test_a_reader_never_sees_its_request_finished_before_its_last_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker thread writes a request's progress while the event loop reads it. A slow reader that looks just as
    its last canvas is being handled (by a step another request drives) still gets that canvas's event first."""
    original_commit = RequestProgress.commit

    def slow_final_commit(self: RequestProgress, *args: Any, **kwargs: Any) -> Any:
        events = original_commit(self, *args, **kwargs)
        if self.complete:
            time.sleep(0.3)  # the window between the progress being complete and its events being handed out
        return events

    monkeypatch.setattr(RequestProgress, "commit", slow_final_commit)
    never_settles = {"max_denoising_steps": 3, "t_max": 2.0}  # every row takes every step: one clock for both
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 2}) as client:
        backend = client.backend
        assert isinstance(backend, TorchBackend)
        seen: dict[str, tuple[int, int]] = {}

        def read(name: str, max_tokens: int, pause: float) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                canvases = 0
                async with client.stream(
                    PROMPTS[1], seed=1, max_tokens=max_tokens, diffusion=never_settles, drafts=True
                ) as s:
                    async for event in s:
                        canvases += isinstance(event, CanvasEvent)
                        if isinstance(event, DoneEvent):
                            seen[name] = (canvases, event.generation.usage.canvases or 0)
                        await anyio.sleep(pause)

            return job

        # row 0 reads slowly and ends after one canvas; row 1 reads at once, so it drives the steps
        await run_together(backend, [read("slow", 32, 0.1), read("fast", 64, 0)])
    assert seen["slow"] == (1, 1)  # its canvas event came before the end
    assert seen["fast"][0] == seen["fast"][1] >= 1
