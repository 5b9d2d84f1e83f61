"""Continuous batching on one loaded checkpoint: which requests the engine denoises, and who steps them.

Every running request is a row of the `RowPool`, on its own canvas clock with its own settings. Whichever request
needs its next events runs the next step for all of them, in the worker thread: rows whose readers are gone leave,
waiting requests join (in order, up to `max_batch` rows and while the memory left holds their cache), then one
denoising pass runs over every row, and each step's events are handed to every request there, so a reader that is
slow, gone or cancelled (even by asyncio itself, which passes through anyio's shields) never stalls the others or
loses them a step. A request waits only for a free row, never for another request's canvas to end.

When the pool is empty, a new request waits `ADMISSION_WINDOW_S` for others sent at the same moment (and for those
still being rendered and tokenized), so that they start their canvases together.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import torch

from diffusiongemma_sdk import StreamEvent
from diffusiongemma_sdk._local.progress import RequestProgress
from diffusiongemma_sdk._local.settings import SamplerSettings, canvases_for
from diffusiongemma_torch._admission import PREFILL_CHUNK, fits_now
from diffusiongemma_torch._checkpoint import Checkpoint
from diffusiongemma_torch._pool import Row, RowPool
from diffusiongemma_torch._prefix import PrefixCache
from diffusiongemma_torch._progress import row_events

__all__ = ["ADMISSION_WAIT_S", "ADMISSION_WINDOW_S", "Job", "Scheduler", "StepLock"]

ADMISSION_WINDOW_S = 0.02
"""How long an idle engine waits for requests sent at the same moment that have not arrived yet (callers hop threads
and loops on their way: LangChain's fan-outs, a server's concurrent connections)."""
ADMISSION_WAIT_S = 0.25
"""The longest an idle engine waits for requests still being prepared (a steady stream of arrivals starves no one)."""


@dataclass(eq=False)
class Job:
    """One request: what the engine needs to run it, its progress, and the events its reader has not taken yet."""

    settings: SamplerSettings
    prompt_ids: list[int]
    generator: torch.Generator
    progress: RequestProgress
    pending: deque[StreamEvent] = field(default_factory=deque)
    row: Row | None = None
    error: Exception | None = None
    finished: bool = False  # set by the worker thread once the job's last events are in `pending`
    left: bool = False  # its reader is gone


class StepLock:
    """The engine's lock, held while a step runs. A request waiting for a step's events waits for the step to end,
    not for its turn at the lock: a finished request's reader is never queued behind the next step."""

    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self._released = anyio.Event()

    def locked(self) -> bool:
        return self._lock.locked()

    async def released(self) -> None:
        """Wait until the lock is next released."""
        await self._released.wait()

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
        self._released.set()
        self._released = anyio.Event()


class Scheduler:
    """The waiting and running requests of one loaded checkpoint."""

    def __init__(self, checkpoint: Checkpoint, *, max_batch: int, prefix_cache_bytes: int = 0) -> None:
        self.checkpoint = checkpoint
        self.max_batch = max_batch
        defaults = checkpoint.defaults
        prefixes = PrefixCache(prefix_cache_bytes, block=PREFILL_CHUNK) if prefix_cache_bytes else None
        self.pool = RowPool(
            checkpoint.net,
            stop_token_ids=defaults.eos_token_ids,
            pad_token_id=defaults.pad_token_id,
            prefix_cache=prefixes,
        )
        self.engine = StepLock()  # held while a step runs
        self.worker = anyio.CapacityLimiter(1)
        self.waiting: list[Job] = []
        self.running: list[Job] = []
        self.batch_sizes: Counter[int] = Counter()  # rows in a denoising pass -> how many such passes
        self.preparing = 0  # requests that have arrived and are not yet waiting (rendered and tokenized meanwhile)
        self._stepping = threading.Lock()  # held by the worker thread during a step
        self._prepared: anyio.Event | None = None

    @asynccontextmanager
    async def arriving(self) -> AsyncIterator[None]:
        """Around a request's preparation: an idle engine waits for it before it starts."""
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
        """`job`'s reader is gone (done, closed or cancelled); its row leaves at once, or after the step running."""
        job.left = True
        if job in self.waiting:
            self.waiting.remove(job)
        if not self.engine.locked():
            with self._stepping:
                self._drop_left()

    async def advance(self, job: Job) -> None:
        """Run steps until `job` has events (or is finished); another request's step may give it them first."""
        if not self.running and self.max_batch > 1:
            await self._arrivals_settled()
        while self.engine.locked():  # a step is running: its end may bring this job's events (or its end)
            await self.engine.released()
            if job.pending or job.finished:
                return
        async with self.engine:
            if job.pending or job.finished:
                return
            with anyio.CancelScope(shield=True):  # a step's events belong to every request in it
                await self._run_step()

    async def _run_step(self) -> None:
        await anyio.to_thread.run_sync(self._step, limiter=self.worker)

    def _step(self) -> None:
        """In the worker thread: rows of gone readers leave, waiting requests join, one pass, its events handed out."""
        with self._stepping:
            self._drop_left()
            try:
                self._admit()
                reports = self.pool.step()
            except Exception as exc:  # the engine failed: every request in it hears it
                for job in self.running:
                    job.error, job.finished = exc, True
                    if job.row is not None:
                        self.pool.remove(job.row)
                self.running = []
                return
            if reports:
                self.batch_sizes[len(reports)] += 1
            for job in list(self.running):
                for report in reports.get(job.row, []) if job.row is not None else []:
                    job.pending.extend(row_events(job.progress, report, 0))
                # only now: the event loop may read `pending` and the progress while this thread writes them
                if job.progress.complete or (job.row is not None and job.row.finished):
                    job.finished = True
                    self._retire(job)

    def _admit(self) -> None:
        """Waiting requests join in order, while there is a free row and the memory left holds their cache."""
        net = self.checkpoint.net
        device = net.embed_tokens.weight.device
        while self.waiting and len(self.running) < self.max_batch:
            job = self.waiting[0]
            tokens = len(job.prompt_ids) + job.progress.max_tokens
            if self.running and not fits_now(net.config, tokens, net.dtype, device):
                return  # a running request will finish and free its cache
            self.waiting.pop(0)
            canvases = canvases_for(job.progress.max_tokens, self.checkpoint.config.canvas_length)
            job.row = self.pool.admit(job.prompt_ids, job.settings, job.generator, canvases)
            self.running.append(job)

    def _drop_left(self) -> None:
        for job in [job for job in self.running if job.left]:
            self._retire(job)

    def _retire(self, job: Job) -> None:
        if job.row is not None:
            self.pool.remove(job.row)
        if job in self.running:
            self.running.remove(job)
        if not self.running and self.checkpoint.net.embed_tokens.weight.is_cuda:
            torch.cuda.empty_cache()

    async def _arrivals_settled(self) -> None:
        """Wait a little for requests sent together, and for those still being prepared, so they start together."""
        await anyio.sleep(ADMISSION_WINDOW_S)
        with anyio.move_on_after(ADMISSION_WAIT_S):
            while self.preparing:
                if self._prepared is None:
                    self._prepared = anyio.Event()
                await self._prepared.wait()
