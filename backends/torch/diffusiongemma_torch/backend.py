"""The `torch:` backend: the local engine behind the SDK's backend contract."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Generator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

import anyio
import torch
from pydantic import BaseModel, ConfigDict, Field

from diffusiongemma_sdk import (
    Backend,
    CanvasEvent,
    Capabilities,
    DenoiseStepEvent,
    DoneEvent,
    FinishReason,
    Generation,
    GenerationRequest,
    ReasoningEvent,
    StreamEvent,
    ToolCallEvent,
    Usage,
    UsageEvent,
)
from diffusiongemma_sdk.gemma4 import Gemma4StreamParser, parse_gemma4
from diffusiongemma_torch.chat import ChatFormat
from diffusiongemma_torch.checkpoint import Checkpoint, batch_fits, check_request_memory
from diffusiongemma_torch.config import SamplerSettings, canvases_for, token_budget
from diffusiongemma_torch.engine import CanvasCommitted, DenoiseStep, generate_canvases

__all__ = ["DEFAULT_MAX_TOKENS", "TorchBackend", "TorchOptions"]

DEFAULT_MAX_TOKENS = 2048

CAPABILITIES = Capabilities(
    per_request_diffusion=True,
    denoise_stream=True,
    tools=True,
    images=False,  # vision weights are not loaded yet
    thinking=True,
    native_structured_output=False,
    logprobs=False,
    seed=True,
    max_concurrency=1,
)


class TorchOptions(BaseModel):
    """`backend_options` of the torch backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str | None = Field(default=None, description="'cuda', 'cuda:1', 'cpu'; default: CUDA when present.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(default=None, description="Default: bf16 on CUDA.")
    stream_every: int = Field(default=1, ge=1, description="Emit a denoise_step event every k steps.")
    default_max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, description="When a request sets none.")
    max_batch: int = Field(
        default=1,
        ge=1,
        description=(
            "Requests that wait for the engine with the same diffusion settings are denoised together, up to this "
            "many. More throughput under load; a seed's tokens can then (rarely) depend on what shares its batch."
        ),
    )


class TorchBackend(Backend):
    """Runs DiffusionGemma in this process, in a worker thread: one batch of requests at a time.

    A request waits until the engine is free, then runs together with the requests waiting with it that have the
    same diffusion settings (up to `max_batch`). Whichever request of a batch needs its next events steps the
    whole batch, so a slow or departed reader never stalls the others.
    """

    def __init__(self, name: str, checkpoint: Checkpoint, chat: ChatFormat, options: TorchOptions) -> None:
        self.name = name
        self.checkpoint = checkpoint
        self.chat = chat
        self.options = options
        self._capabilities = CAPABILITIES.model_copy(update={"max_concurrency": options.max_batch})
        self._engine = anyio.Lock()  # held while a batch starts or steps
        self._worker = anyio.CapacityLimiter(1)
        self._waiting: list[_Job] = []
        self._running: _Batch | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def generate(self, request: GenerationRequest) -> Generation:
        async with aclosing(self._events(request, drafts=False)) as events:
            async for event in events:
                if isinstance(event, DoneEvent):
                    return event.generation
        raise RuntimeError("the engine ended without a result")  # pragma: no cover

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        async with aclosing(self._events(request, drafts=True)) as events:
            async for event in events:
                yield event

    async def aclose(self) -> None:
        if self.checkpoint.net.embed_tokens.weight.is_cuda:
            torch.cuda.empty_cache()

    async def _events(self, request: GenerationRequest, *, drafts: bool) -> AsyncGenerator[StreamEvent, None]:
        job = await anyio.to_thread.run_sync(self._prepare, request, drafts, limiter=self._worker)
        self._waiting.append(job)
        try:
            while True:
                while job.pending:
                    yield job.pending.popleft()
                if job.batch is not None and job.batch.error is not None:
                    raise job.batch.error
                if job.run.complete:
                    break
                await self._advance(job)
        finally:
            job.left = True
            if job in self._waiting:
                self._waiting.remove(job)
            if job.batch is not None and not self._engine.locked():
                self._release_if_done(job.batch)  # else the task stepping it does, after its step
        generation = job.run.generation()
        for call in generation.tool_calls:
            yield ToolCallEvent(tool_call=call)
        yield UsageEvent(usage=generation.usage)
        yield DoneEvent(generation=generation)

    async def _advance(self, job: _Job) -> None:
        """Wait for the engine, then step `job`'s batch, unless another task has meanwhile given it events.

        When the engine is free, the first task to get it starts the next batch: the oldest waiting request and
        the ones that can share its batch.
        """
        while (running := self._running) is not None and running is not job.batch:
            await running.ended.wait()
        async with self._engine:
            if job.pending or job.run.complete:
                return
            with anyio.CancelScope(shield=True):  # a step's reports belong to every job of the batch
                if self._running is None:
                    self._running = self._form_batch()
                if self._running is job.batch:
                    await self._step(self._running)

    def _form_batch(self) -> _Batch:
        """The oldest waiting job and those waiting with the same settings, left-padded into one prompt tensor."""
        net, config, defaults = self.checkpoint.net, self.checkpoint.config, self.checkpoint.defaults
        leader = self._waiting[0]
        jobs = [job for job in self._waiting if job.settings == leader.settings][: self.options.max_batch]
        context = max(len(job.prompt_ids) for job in jobs) + max(job.run.max_tokens for job in jobs)
        while len(jobs) > 1 and not batch_fits(config, context, len(jobs), net.dtype, net.embed_tokens.weight.device):
            jobs.pop()
        for job in jobs:
            self._waiting.remove(job)
        width = max(len(job.prompt_ids) for job in jobs)
        padding = [width - len(job.prompt_ids) for job in jobs]
        device = net.embed_tokens.weight.device
        prompt = [[defaults.pad_token_id] * pad + job.prompt_ids for pad, job in zip(padding, jobs, strict=True)]
        valid = torch.tensor([[False] * pad + [True] * (width - pad) for pad in padding], device=device)
        reports = generate_canvases(
            net,
            torch.tensor(prompt, device=device),
            leader.settings,
            max_canvases=[canvases_for(job.run.max_tokens, config.canvas_length) for job in jobs],
            stop_token_ids=defaults.eos_token_ids,
            pad_token_id=defaults.pad_token_id,
            generator=[job.generator for job in jobs],
            prompt_valid=valid if any(padding) else None,
        )
        batch = _Batch(jobs=jobs, reports=reports)
        for job in jobs:
            job.batch = batch
        return batch

    async def _step(self, batch: _Batch) -> None:
        """One engine step for the batch; the batch ends when none of its jobs wants more."""
        await anyio.to_thread.run_sync(batch.step, self.options.stream_every, limiter=self._worker)
        self._release_if_done(batch)

    def _release_if_done(self, batch: _Batch) -> None:
        """Stop the engine and free it for the next batch once every job is complete or gone."""
        if batch.ended.is_set() or not all(job.run.complete or job.left for job in batch.jobs):
            return
        with batch.stepping:  # a cancellation that did not wait for the worker waits here for its step
            batch.reports.close()
        if self.checkpoint.net.embed_tokens.weight.is_cuda:
            torch.cuda.empty_cache()
        if self._running is batch:
            self._running = None
        batch.ended.set()

    def _prepare(self, request: GenerationRequest, drafts: bool) -> _Job:
        net, defaults = self.checkpoint.net, self.checkpoint.defaults
        settings = defaults.resolve(request.diffusion)
        prompt_ids = self.chat.encode(
            self.chat.render(request.messages, tools=request.tools, thinking=request.thinking)
        )
        max_tokens = token_budget(
            len(prompt_ids), request.max_tokens, self.options.default_max_tokens, self.checkpoint.config
        )
        device = net.embed_tokens.weight.device
        check_request_memory(net.config, len(prompt_ids) + max_tokens, net.embed_tokens.weight.dtype, device)
        generator = torch.Generator(device=device)
        # torch takes seeds in [-2**63, 2**64); any other integer wraps as torch wraps negative ones
        generator.manual_seed(request.seed % 2**64 if request.seed is not None else secrets.randbits(63))
        run = _Run(
            backend=self.name,
            chat=self.chat,
            prompt_tokens=len(prompt_ids),
            max_tokens=max_tokens,
            stop_tokens=set(defaults.eos_token_ids),
            stop_strings=request.stop,
            pad_token_id=defaults.pad_token_id,
        )
        return _Job(settings=settings, prompt_ids=prompt_ids, generator=generator, drafts=drafts, run=run)


@dataclass(eq=False)
class _Job:
    """One request: what the engine needs to run it, its progress, and the events its reader has not taken yet."""

    settings: SamplerSettings
    prompt_ids: list[int]
    generator: torch.Generator
    drafts: bool
    run: _Run
    pending: deque[StreamEvent] = field(default_factory=deque)
    batch: _Batch | None = None
    left: bool = False  # its reader is gone


@dataclass(eq=False)
class _Batch:
    """Jobs denoised together: row i of every engine report is `jobs[i]`'s."""

    jobs: list[_Job]
    reports: Generator[DenoiseStep | CanvasCommitted, None, None]
    stepping: threading.Lock = field(default_factory=threading.Lock)
    ended: anyio.Event = field(default_factory=anyio.Event)
    error: Exception | None = None

    def step(self, every: int) -> None:
        """In the worker thread: the next engine report, handed to every job at once.

        Done here, not on the event loop, so that a report is never lost: a task cancelled by asyncio itself (which
        passes through anyio's shields) stops waiting, but the step still reaches every job.
        """
        with self.stepping:
            try:
                report = next(self.reports, None)
            except Exception as exc:  # the engine failed: every job of the batch hears it
                self.error, report = exc, None
            for row, job in enumerate(self.jobs):
                if report is None:
                    job.run.complete = True
                elif not job.run.complete:
                    job.pending.extend(job.run.handle(report, row, drafts=job.drafts, every=every))


@dataclass
class _Run:
    """One generation's progress: committed tokens, text parsed so far, statistics."""

    backend: str
    chat: ChatFormat
    prompt_tokens: int
    max_tokens: int
    stop_tokens: set[int]
    stop_strings: list[str]
    pad_token_id: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason = "length"
    complete: bool = False
    canvases: int = 0
    steps: int = 0
    decoder_passes: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_canvas_s: float | None = None
    parser: Gemma4StreamParser = field(default_factory=Gemma4StreamParser)

    def handle(self, report: DenoiseStep | CanvasCommitted, row: int, *, drafts: bool, every: int) -> list[StreamEvent]:
        """The events row `row` of an engine report makes."""
        if isinstance(report, DenoiseStep):
            if not drafts or report.step % every or not report.denoised[row]:
                return []
            return [
                DenoiseStepEvent(
                    canvas_index=report.canvas_index,
                    step=report.step,
                    draft_text=self.chat.decode(report.draft[row].tolist(), skip_special_tokens=True),
                    accepted_fraction=float(report.accepted_fraction[row]),
                    mean_entropy=float(report.mean_entropy[row]),
                )
            ]
        return self._commit(report, row)

    def _commit(self, report: CanvasCommitted, row: int) -> list[StreamEvent]:
        steps = int(report.steps[row])
        self.canvases += 1
        self.steps += steps
        self.decoder_passes = int(report.decoder_passes[row])
        self.first_canvas_s = self.first_canvas_s or time.perf_counter() - self.started
        for token in report.tokens[row].tolist():
            if token in self.stop_tokens:
                self.finish_reason, self.complete = "stop", True
                break
            if len(self.tokens) == self.max_tokens:
                self.complete = True
                break
            self.tokens.append(token)
        text = self.chat.decode([token for token in self.tokens if token != self.pad_token_id])  # counted, not shown
        cut = min((i for i in (text.find(s) for s in self.stop_strings if s) if i >= 0), default=-1)
        if cut >= 0:
            text, self.finish_reason, self.complete = text[:cut], "stop", True
        delta, self.text = text[len(self.text) :], text
        if len(self.tokens) >= self.max_tokens:
            self.complete = True
        segments = self.parser.feed(delta) + (self.parser.close() if self.complete else [])
        events: list[StreamEvent] = [ReasoningEvent(text_delta=s.text) for s in segments if s.kind == "reasoning"]
        answer = "".join(s.text for s in segments if s.kind == "text")
        events.append(CanvasEvent(canvas_index=report.canvas_index, text_delta=answer, steps=steps))
        return events

    def generation(self) -> Generation:
        parsed = parse_gemma4(self.text)
        finish_reason: FinishReason = "tool_calls" if parsed.tool_calls else self.finish_reason
        completion = len(self.tokens)
        return Generation(
            text=parsed.text,
            reasoning=parsed.reasoning,
            tool_calls=parsed.tool_calls,
            finish_reason=finish_reason,
            usage=Usage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=completion,
                total_tokens=self.prompt_tokens + completion,
                canvases=self.canvases,
                denoising_steps=self.steps,
                tokens_per_forward=completion / self.decoder_passes if self.decoder_passes else None,
                ttft_s=self.first_canvas_s,
                wall_s=time.perf_counter() - self.started,
            ),
            backend=self.backend,
        )
