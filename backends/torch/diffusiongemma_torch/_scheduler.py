"""Which requests the engine denoises together, and who steps them.

Requests wait in order. When the engine is free, the first task to get it starts a batch: the oldest waiting request
and the waiting ones with the same diffusion settings, up to `max_batch` and to what free memory holds; the others
wait for the batch to end. Whichever request of a batch needs its next events steps the whole batch; the worker
thread hands each step's events to every request, so a reader that is slow, gone or cancelled (even by asyncio
itself, which passes through anyio's shields) never stalls the others or loses them a step.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field

import anyio
import torch

from diffusiongemma_sdk import StreamEvent
from diffusiongemma_sdk._local.progress import RequestProgress
from diffusiongemma_sdk._local.settings import SamplerSettings, canvases_for
from diffusiongemma_torch._admission import batch_fits
from diffusiongemma_torch._checkpoint import Checkpoint
from diffusiongemma_torch._engine import CanvasCommitted, DenoiseStep, generate_canvases
from diffusiongemma_torch._progress import row_events

__all__ = ["Batch", "Job", "Scheduler"]


@dataclass(eq=False)
class Job:
    """One request: what the engine needs to run it, its progress, and the events its reader has not taken yet."""

    settings: SamplerSettings
    prompt_ids: list[int]
    generator: torch.Generator
    progress: RequestProgress
    pending: deque[StreamEvent] = field(default_factory=deque)
    batch: Batch | None = None
    finished: bool = False  # set by the worker thread once the job's last events are in `pending`
    left: bool = False  # its reader is gone


@dataclass(eq=False)
class Batch:
    """Jobs denoised together: row i of every engine report is `jobs[i]`'s."""

    settings: SamplerSettings
    jobs: list[Job]
    reports: Generator[DenoiseStep | CanvasCommitted, None, None] = field(init=False)
    stepping: threading.Lock = field(default_factory=threading.Lock)
    ended: bool = False
    error: Exception | None = None

    def step(self) -> None:
        """In the worker thread: the next engine report, handed to every job at once."""
        with self.stepping:
            try:
                report = next(self.reports, None)
            except Exception as exc:  # the engine failed: every job of the batch hears it
                self.error, report = exc, None
            for row, job in enumerate(self.jobs):
                if report is not None and not job.finished:
                    job.pending.extend(row_events(job.progress, report, row))
                # only now: the event loop may read `pending` and the progress while this thread writes them
                job.finished = report is None or job.progress.complete


class Scheduler:
    """The waiting requests and the running batch of one loaded checkpoint."""

    def __init__(self, checkpoint: Checkpoint, *, max_batch: int) -> None:
        self.checkpoint = checkpoint
        self.max_batch = max_batch
        self.engine = anyio.Lock()  # held while a batch starts or steps
        self.worker = anyio.CapacityLimiter(1)
        self.waiting: list[Job] = []
        self.running: Batch | None = None
        self._changed: anyio.Event | None = None

    def submit(self, job: Job) -> None:
        self.waiting.append(job)

    def leave(self, job: Job) -> None:
        """`job`'s reader is gone (done, closed or cancelled)."""
        job.left = True
        if job in self.waiting:
            self.waiting.remove(job)
        if job.batch is not None and not self.engine.locked():
            self._release_if_done(job.batch)  # else the task stepping it does, after its step

    async def advance(self, job: Job) -> None:
        """Wait for the engine, then step `job`'s batch, unless another task has meanwhile given it events."""
        while (running := self.running) is not None and running is not job.batch:
            await self._changes().wait()
        async with self.engine:
            if job.pending or job.finished:
                return
            with anyio.CancelScope(shield=True):  # a step's reports belong to every job of the batch
                if self.running is None:
                    self.running = self._start_batch()
                if self.running is job.batch:
                    await self._step(self.running)

    def _start_batch(self) -> Batch:
        """The oldest waiting job and those waiting with the same settings, left-padded into one prompt tensor."""
        net, config, defaults = self.checkpoint.net, self.checkpoint.config, self.checkpoint.defaults
        device = net.embed_tokens.weight.device
        leader = self.waiting[0]
        jobs = [job for job in self.waiting if job.settings == leader.settings][: self.max_batch]
        context = max(len(job.prompt_ids) for job in jobs) + max(job.progress.max_tokens for job in jobs)
        while len(jobs) > 1 and not batch_fits(config, context, len(jobs), net.dtype, device):
            jobs.pop()
        for job in jobs:
            self.waiting.remove(job)
        batch = Batch(settings=leader.settings, jobs=jobs)
        width = max(len(job.prompt_ids) for job in jobs)
        padding = [width - len(job.prompt_ids) for job in jobs]
        prompt = [[defaults.pad_token_id] * pad + job.prompt_ids for pad, job in zip(padding, jobs, strict=True)]
        valid = torch.tensor([[False] * pad + [True] * (width - pad) for pad in padding], device=device)
        batch.reports = generate_canvases(
            net,
            torch.tensor(prompt, device=device),
            leader.settings,
            max_canvases=[self._canvases(job) for job in jobs],
            stop_token_ids=defaults.eos_token_ids,
            pad_token_id=defaults.pad_token_id,
            generator=[job.generator for job in jobs],
            prompt_valid=valid if any(padding) else None,
        )
        for job in jobs:
            job.batch = batch
        return batch

    async def _step(self, batch: Batch) -> None:
        await anyio.to_thread.run_sync(batch.step, limiter=self.worker)
        self._release_if_done(batch)

    def _release_if_done(self, batch: Batch) -> None:
        """Stop the engine and free it for the next batch once every job is complete or gone."""
        if batch.ended or not all(job.finished or job.left for job in batch.jobs):
            return
        with batch.stepping:  # a cancellation that did not wait for the worker waits here for its step
            batch.reports.close()
        batch.ended = True
        if self.checkpoint.net.embed_tokens.weight.is_cuda:
            torch.cuda.empty_cache()
        if self.running is batch:
            self.running = None
        self._notify()

    def _canvases(self, job: Job) -> int:
        return canvases_for(job.progress.max_tokens, self.checkpoint.config.canvas_length)

    def _changes(self) -> anyio.Event:
        """An event set when the running batch ends."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
