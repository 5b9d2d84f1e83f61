"""Which requests the engine denoises together, and who steps them.

Requests wait in order. When the engine is free, the first task to get it starts a batch: the oldest waiting request
and the waiting ones with the same diffusion settings, up to `max_batch` and to what free memory holds; the others
wait for the batch to end. Requests that arrived together (`abatch`, a fan-out) are still being rendered and
tokenized when the first of them is ready, so with `max_batch` over 1 a batch starts `ADMISSION_WINDOW_S` after the
engine frees and once those in preparation have joined the queue (or `ADMISSION_WAIT_S` has passed).

Whichever request of a batch needs its next events steps the whole batch; the worker thread hands each step's events
to every request, so a reader that is slow, gone or cancelled (even by asyncio itself, which passes through anyio's
shields) never stalls the others or loses them a step.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import torch

from diffusiongemma_sdk import StreamEvent
from diffusiongemma_torch._admission import batch_fits
from diffusiongemma_torch._checkpoint import Checkpoint
from diffusiongemma_torch._config import SamplerSettings, canvases_for
from diffusiongemma_torch._engine import CanvasCommitted, DenoiseStep, generate_canvases
from diffusiongemma_torch._progress import RequestProgress

__all__ = ["ADMISSION_WAIT_S", "Batch", "Job", "Scheduler"]

ADMISSION_WINDOW_S = 0.02
"""How long a batch waits to start for requests sent at the same moment that have not arrived yet (callers hop
threads and loops on their way: LangChain's fan-outs, a server's concurrent connections)."""
ADMISSION_WAIT_S = 0.25
"""The longest a batch waits to start for requests still being prepared (a steady stream of arrivals starves no one)."""


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

    def step(self, every: int) -> None:
        """In the worker thread: the next engine report, handed to every job at once."""
        with self.stepping:
            try:
                report = next(self.reports, None)
            except Exception as exc:  # the engine failed: every job of the batch hears it
                self.error, report = exc, None
            for row, job in enumerate(self.jobs):
                if report is not None and not job.finished:
                    job.pending.extend(job.progress.handle(report, row, every=every))
                # only now: the event loop may read `pending` and the progress while this thread writes them
                job.finished = report is None or job.progress.complete


class Scheduler:
    """The waiting requests and the running batch of one loaded checkpoint."""

    def __init__(self, checkpoint: Checkpoint, *, max_batch: int, stream_every: int) -> None:
        self.checkpoint = checkpoint
        self.max_batch = max_batch
        self.stream_every = stream_every
        self.engine = anyio.Lock()  # held while a batch starts or steps
        self.worker = anyio.CapacityLimiter(1)
        self.waiting: list[Job] = []
        self.running: Batch | None = None
        self.batch_sizes: Counter[int] = Counter()  # rows of each batch started -> how many such batches
        self.preparing = 0  # requests that have arrived and are not yet waiting (rendered and tokenized meanwhile)
        self._changed: anyio.Event | None = None
        self._prepared: anyio.Event | None = None

    @asynccontextmanager
    async def arriving(self) -> AsyncIterator[None]:
        """Around a request's preparation: a batch about to start waits for it."""
        self.preparing += 1
        try:
            yield
        finally:
            self.preparing -= 1
            if not self.preparing and self._prepared is not None:
                self._prepared.set()
                self._prepared = None

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
        if self.running is None and self.max_batch > 1:
            await self._arrivals_settled()
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
        self.batch_sizes[len(jobs)] += 1
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
        await anyio.to_thread.run_sync(batch.step, self.stream_every, limiter=self.worker)
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

    async def _arrivals_settled(self) -> None:
        """Wait (a little at most) until no request is being prepared, so that requests sent together batch together."""
        await anyio.sleep(ADMISSION_WINDOW_S)
        with anyio.move_on_after(ADMISSION_WAIT_S):
            while self.preparing:
                if self._prepared is None:
                    self._prepared = anyio.Event()
                await self._prepared.wait()

    def _changes(self) -> anyio.Event:
        """An event set when the running batch ends."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
