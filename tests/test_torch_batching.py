"""Continuous batching through the public client (`max_batch`): requests share denoising passes whatever their
settings, join at the next step, leave at once, and each gets what it gets alone (the demo model)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import pytest
import torch

pytest.importorskip("transformers")

from diffusiongemma_sdk import AsyncDiffusionGemma, CanvasEvent, DenoiseStepEvent, DoneEvent, Generation
from diffusiongemma_sdk._local.progress import RequestProgress
from diffusiongemma_torch import _admission as admission
from diffusiongemma_torch import _scheduler as scheduler_module
from diffusiongemma_torch._backend import TorchBackend
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch._scheduler import Scheduler
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


async def solo_answers(**request: Any) -> list[Generation]:
    async with AsyncDiffusionGemma("torch:demo") as client:
        return [await client.generate(text, seed=i, **request) for i, text in enumerate(PROMPTS)]


def widest_pass(backend: TorchBackend) -> int:
    """The most requests one denoising pass has carried."""
    return max(backend.batch_sizes, default=0)


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


async def test_waiting_requests_share_passes_and_each_gets_its_own_answer() -> None:
    expected = await solo_answers(tools=[add])
    answers: list[Generation | None] = [None] * len(PROMPTS)
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 8}) as client:
        assert isinstance(client.backend, TorchBackend)
        assert client.capabilities.max_concurrency == 8

        def one(i: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                answers[i] = await client.generate(PROMPTS[i], seed=i, tools=[add])

            return job

        await run_together(client.backend, [one(i) for i in range(len(PROMPTS))])
        assert widest_pass(client.backend) == len(PROMPTS)
    for got, want in zip(answers, expected, strict=True):
        same_generation(got, want)
    assert answers[2] is not None
    assert answers[2].tool_calls[0].arguments == {"a": 12, "b": 30}


async def test_requests_sent_together_to_an_idle_engine_share_a_pass() -> None:
    """Nothing holds the engine: the first request ready waits for the others still being prepared."""
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 8}) as client:
        assert isinstance(client.backend, TorchBackend)
        async with anyio.create_task_group() as group:
            for i, prompt in enumerate(PROMPTS):
                group.start_soon(partial(client.generate, prompt, seed=i))
        assert widest_pass(client.backend) == len(PROMPTS)


async def test_requests_with_other_settings_and_drafts_share_passes() -> None:
    """Each request keeps its own schedule, bound and stop rule (and drafts, or none) inside one pass."""
    settings = [{"max_denoising_steps": 8}, {"max_denoising_steps": 16, "entropy_bound": 0.05}, {"t_max": 0.3}]
    async with AsyncDiffusionGemma("torch:demo") as solo:
        expected = [await solo.generate(PROMPTS[i], seed=i, diffusion=d) for i, d in enumerate(settings)]
    answers: list[Generation | None] = [None] * len(settings)
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 4}) as client:
        assert isinstance(client.backend, TorchBackend)

        def one(i: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                async with client.stream(PROMPTS[i], seed=i, diffusion=settings[i], drafts=i == 1) as stream:
                    answers[i] = await stream.final()

            return job

        await run_together(client.backend, [one(i) for i in range(len(settings))])
        assert widest_pass(client.backend) == len(settings)
    for got, want in zip(answers, expected, strict=True):
        same_generation(got, want)


async def test_a_request_joins_the_running_pass_at_the_next_step() -> None:
    """A request sent while another is mid-canvas starts at once: it waits for no canvas of the other's."""
    slow = {"max_denoising_steps": 200, "confidence_threshold": 1e-12}  # every canvas takes all its steps
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 2}) as client:
        backend = client.backend
        assert isinstance(backend, TorchBackend)
        order: list[str] = []
        async with client.stream(PROMPTS[1], seed=1, diffusion=slow, drafts=True, max_tokens=32) as long:
            async for event in long:
                if isinstance(event, DenoiseStepEvent) and event.step == 3:
                    break  # the long request is three steps into its canvas
            quick = await client.generate(PROMPTS[0], seed=0)
            order.append("quick done")
            async for event in long:
                if isinstance(event, DenoiseStepEvent) and event.step == 20:
                    order.append("long at step 20")
        assert order == ["quick done", "long at step 20"]
        assert widest_pass(backend) == 2
    same_generation(quick, (await solo_answers())[0])


async def test_a_finished_request_is_answered_without_waiting_for_the_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Readers waiting for a step wait for its end, not for their turn at the engine: once the step that finishes
    a request ends, its answer is out before any further step of the others has run."""
    original_step = Scheduler._step
    steps_done: list[int] = []
    retired_after: dict[int, int] = {}

    def slow_step(self: Scheduler) -> None:
        time.sleep(0.05)  # long enough for any reader to be answered before the next step ends
        finishing = [job for job in self.running if job.row is not None and job.row.finished is False]
        original_step(self)
        steps_done.append(1)
        for job in finishing:
            if job.finished:
                retired_after[job.generator.initial_seed()] = len(steps_done)

    monkeypatch.setattr(Scheduler, "_step", slow_step)
    slow = {"max_denoising_steps": 200, "confidence_threshold": 1e-12}
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 4}) as client:
        backend = client.backend
        assert isinstance(backend, TorchBackend)
        answered_after: dict[int, int] = {}

        async def one(i: int, diffusion: dict[str, Any] | None) -> None:
            await client.generate(PROMPTS[i], seed=i, diffusion=diffusion, max_tokens=32)
            answered_after[i] = len(steps_done)

        async with anyio.create_task_group() as group:
            group.start_soon(one, 0, None)  # a quick answer
            for i in (1, 2):  # two readers that keep stepping the pool, queued at the engine before anyone else
                group.start_soon(one, i, {**slow, "max_denoising_steps": 30})
    assert retired_after[0] == answered_after[0]


async def test_a_stream_sees_its_own_steps_and_a_reader_leaving_holds_up_nobody() -> None:
    expected = await solo_answers()
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
        assert not backend._scheduler.running  # the engine is free
        assert not backend._scheduler.pool.rows
        assert widest_pass(backend) == len(PROMPTS)
        assert sorted(streamed) == [1, 2, 3]
        for i, (drafts, generation) in streamed.items():
            same_generation(generation, expected[i])
            assert drafts == generation.usage.denoising_steps  # a draft for each of its own steps, no other row's
        same_generation(await client.generate(PROMPTS[1], seed=1), expected[1])


async def test_requests_join_while_the_memory_left_holds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = await solo_answers()
    async with AsyncDiffusionGemma("torch:demo", backend_options={"max_batch": 8}) as client:
        backend = client.backend
        assert isinstance(backend, TorchBackend)
        scheduler = backend._scheduler
        monkeypatch.setattr(scheduler_module, "fits_now", lambda *args: len(scheduler.running) < 2)
        answers: list[Generation | None] = [None] * 3

        def one(i: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                answers[i] = await client.generate(PROMPTS[i], seed=i)

            return job

        await run_together(backend, [one(i) for i in range(3)])
        assert widest_pass(backend) == 2
    for got, want in zip(answers, expected[:3], strict=True):
        same_generation(got, want)


def test_a_request_fits_while_its_cache_and_workspace_fit_in_what_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_checkpoint(str(DEMO_DIR)).config
    needed = admission.request_bytes(config, 100, torch.float32) + 6 * config.canvas_length * config.vocab_size * 4
    cpu = torch.device("cpu")
    monkeypatch.setattr(admission, "_available_bytes", lambda device: needed)
    assert admission.fits_now(config, 100, torch.float32, cpu)
    monkeypatch.setattr(admission, "_available_bytes", lambda device: needed - 1)
    assert not admission.fits_now(config, 100, torch.float32, cpu)


async def test_a_request_cancelled_by_asyncio_inside_a_step_loses_nothing_for_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`task.cancel()` (what `asyncio.wait_for` does) passes through anyio's shields. Cancelling the task that is
    stepping the pool, while the step runs, must still deliver that step to every other request."""
    expected = await solo_answers()
    loop = asyncio.get_running_loop()
    in_step = asyncio.Event()
    stepper: list[asyncio.Task[Any] | None] = []  # the task behind each step
    original_run_step, original_step = Scheduler._run_step, Scheduler._step

    async def traced_run_step(self: Scheduler) -> None:
        stepper.append(asyncio.current_task())
        await original_run_step(self)

    def slow_step(self: Scheduler) -> None:
        if len(stepper) == 2:  # the pool's second step, in which every row gets a draft
            loop.call_soon_threadsafe(in_step.set)
            time.sleep(0.3)  # the cancellation lands while the worker thread runs the step
        original_step(self)

    monkeypatch.setattr(Scheduler, "_run_step", traced_run_step)
    monkeypatch.setattr(Scheduler, "_step", slow_step)
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
        cancelled = stepper[1]
        assert cancelled in tasks
        cancelled.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await wait_until(lambda: not backend._scheduler.running, timeout=30)
        assert not backend._scheduler.pool.rows  # the cancelled request's row left too
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
