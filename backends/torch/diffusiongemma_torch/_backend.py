"""The `torch:` backend: the local engine behind the SDK's backend contract."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator
from typing import Literal

import anyio
import torch
from pydantic import BaseModel, ConfigDict, Field

from diffusiongemma_sdk import GenerationRequest, StreamEvent
from diffusiongemma_sdk._local.backend import LocalBackend
from diffusiongemma_sdk._local.request import local_capabilities, prepare_request
from diffusiongemma_torch._admission import check_request_memory
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch._checkpoint import Checkpoint
from diffusiongemma_torch._scheduler import Job, Scheduler

__all__ = ["DEFAULT_MAX_TOKENS", "TorchBackend", "TorchOptions"]

DEFAULT_MAX_TOKENS = 2048


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
            "Requests denoised together, each on its own canvas clock with its own settings, up to this many; a "
            "request joins at the next denoising step. More throughput under load; a seed's tokens can then (rarely) "
            "depend on what shares the pass (the rounding of batched arithmetic)."
        ),
    )
    prefix_cache_mb: int = Field(
        default=512,
        ge=0,
        description=(
            "Memory for the keys and values of prompts already encoded, reused by prompts that start alike (the "
            "same system prompt and tools, the conversation so far); answers are the same as without. 0: off."
        ),
    )


class TorchBackend(LocalBackend):
    """Runs DiffusionGemma in this process, in a worker thread; requests are batched by the `Scheduler`.

    `tool_choice` is enforced on the canvas: "none" bans the tool-call token, so no call can be sampled or committed;
    "required" and a tool's name end the prompt with the call's opening (`<|tool_call>call:` and the name when
    there is one tool to call), so the answer is that call; with thinking on, the forced call comes first and the
    model does not reason.
    """

    def __init__(self, name: str, checkpoint: Checkpoint, chat: ChatFormat, options: TorchOptions) -> None:
        self.name = name
        self.checkpoint = checkpoint
        self.chat = chat
        self.options = options
        self._capabilities = local_capabilities(
            chat, max_concurrency=options.max_batch, context_window=checkpoint.config.max_position_embeddings
        )
        self._scheduler = Scheduler(
            checkpoint, max_batch=options.max_batch, prefix_cache_bytes=options.prefix_cache_mb * 2**20
        )

    @property
    def batch_sizes(self) -> Counter[int]:
        """How many denoising passes the engine ran with each number of rows (requests that shared a pass)."""
        return Counter(self._scheduler.batch_sizes)

    async def aclose(self) -> None:
        if self.checkpoint.net.embed_tokens.weight.is_cuda:
            torch.cuda.empty_cache()

    async def _events(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        scheduler = self._scheduler
        async with scheduler.arriving():
            # not in the engine's worker: requests are prepared while the rows step, ready to join the next pass
            job = await anyio.to_thread.run_sync(self._prepare, request)
            scheduler.submit(job)
        try:
            while True:
                while job.pending:
                    yield job.pending.popleft()
                if job.error is not None:
                    raise job.error
                if job.finished:
                    break
                await scheduler.advance(job)
        finally:
            scheduler.leave(job)
        for event in job.progress.final_events():
            yield event

    def _prepare(self, request: GenerationRequest) -> Job:
        """Render and check a request: the job the scheduler runs."""
        net, config = self.checkpoint.net, self.checkpoint.config
        prepared = prepare_request(
            request,
            backend=self.name,
            chat=self.chat,
            defaults=self.checkpoint.defaults,
            canvas_length=config.canvas_length,
            context=config.max_position_embeddings,
            default_max_tokens=self.options.default_max_tokens,
            every=self.options.stream_every,
        )
        device = net.embed_tokens.weight.device
        context = len(prepared.prompt_ids) + prepared.progress.max_tokens
        check_request_memory(net.config, context, net.embed_tokens.weight.dtype, device)
        generator = torch.Generator(device=device).manual_seed(prepared.seed)
        return Job(
            settings=prepared.settings, prompt_ids=prepared.prompt_ids, generator=generator, progress=prepared.progress
        )
