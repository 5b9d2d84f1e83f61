"""The `torch:` backend: the local engine behind the SDK's backend contract."""

from __future__ import annotations

import dataclasses
import secrets
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Literal

import anyio
import torch
from pydantic import BaseModel, ConfigDict, Field

from diffusiongemma_sdk import (
    Backend,
    Capabilities,
    DoneEvent,
    Generation,
    GenerationRequest,
    StreamEvent,
)
from diffusiongemma_sdk._gemma4 import TOOL_CALL_OPEN
from diffusiongemma_torch._admission import check_request_memory
from diffusiongemma_torch._chat import ChatFormat, forced_call
from diffusiongemma_torch._checkpoint import Checkpoint
from diffusiongemma_torch._config import token_budget
from diffusiongemma_torch._progress import RequestProgress
from diffusiongemma_torch._scheduler import Job, Scheduler

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


class TorchBackend(Backend):
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
        # tool_choice is enforced through the tool-call marker: banned for "none", written first for a forced call
        self._call_marker = chat.token_id(TOOL_CALL_OPEN)
        forms = CAPABILITIES.tool_choice if self._call_marker is not None else ("auto",)
        self._capabilities = CAPABILITIES.model_copy(
            update={
                "max_concurrency": options.max_batch,
                "tool_choice": forms,
                "context_window": checkpoint.config.max_position_embeddings,
            }
        )
        self._scheduler = Scheduler(
            checkpoint,
            max_batch=options.max_batch,
            stream_every=options.stream_every,
            prefix_cache_bytes=options.prefix_cache_mb * 2**20,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def batch_sizes(self) -> Counter[int]:
        """How many denoising passes the engine ran with each number of rows (requests that shared a pass)."""
        return Counter(self._scheduler.batch_sizes)

    async def generate(self, request: GenerationRequest) -> Generation:
        async with aclosing(self._events(request.model_copy(update={"drafts": False}))) as events:
            async for event in events:
                if isinstance(event, DoneEvent):
                    return event.generation
        raise RuntimeError("the engine ended without a result")  # pragma: no cover

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        async with aclosing(self._events(request)) as events:
            async for event in events:
                yield event

    async def aclose(self) -> None:
        if self.checkpoint.net.embed_tokens.weight.is_cuda:
            torch.cuda.empty_cache()

    async def _events(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        scheduler = self._scheduler
        async with scheduler.arriving():
            job = await anyio.to_thread.run_sync(self._prepare, request, limiter=scheduler.worker)
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
        net, defaults = self.checkpoint.net, self.checkpoint.defaults
        settings = defaults.resolve(request.diffusion)
        if request.tool_choice == "none" and self._call_marker is not None:
            settings = dataclasses.replace(settings, banned_token_ids=(self._call_marker,))
        forced = forced_call(request.tool_choice, request.tools)
        prompt = self.chat.render(request.messages, tools=request.tools, thinking=request.thinking)
        prompt_ids = self.chat.encode(prompt + (forced.opening if forced is not None else ""))
        max_tokens = token_budget(
            len(prompt_ids), request.max_tokens, self.options.default_max_tokens, self.checkpoint.config
        )
        device = net.embed_tokens.weight.device
        check_request_memory(net.config, len(prompt_ids) + max_tokens, net.embed_tokens.weight.dtype, device)
        generator = torch.Generator(device=device)
        # torch takes seeds in [-2**63, 2**64); any other integer wraps as torch wraps negative ones
        generator.manual_seed(request.seed % 2**64 if request.seed is not None else secrets.randbits(63))
        progress = RequestProgress(
            backend=self.name,
            chat=self.chat,
            prompt_tokens=len(prompt_ids),
            max_tokens=max_tokens,
            stop_tokens=set(defaults.eos_token_ids),
            stop_strings=request.stop,
            pad_token_id=defaults.pad_token_id,
            drafts=request.drafts,
            forced=forced,
        )
        return Job(settings=settings, prompt_ids=prompt_ids, generator=generator, progress=progress)
