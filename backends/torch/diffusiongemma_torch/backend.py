"""The `torch:` backend: the local engine behind the SDK's backend contract."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
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
from diffusiongemma_torch.checkpoint import Checkpoint, check_request_memory
from diffusiongemma_torch.config import canvases_for, token_budget
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


class TorchBackend(Backend):
    """Runs DiffusionGemma in this process, one generation at a time, in a worker thread."""

    def __init__(self, name: str, checkpoint: Checkpoint, chat: ChatFormat, options: TorchOptions) -> None:
        self.name = name
        self.checkpoint = checkpoint
        self.chat = chat
        self.options = options
        self._one_at_a_time = anyio.Lock()
        self._worker = anyio.CapacityLimiter(1)

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

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
        async with self._one_at_a_time:
            run = await anyio.to_thread.run_sync(self._start, request, limiter=self._worker)
            try:
                while not run.complete:
                    report = await anyio.to_thread.run_sync(_next, run, limiter=self._worker)
                    if report is None:
                        break
                    for event in run.handle(report, drafts=drafts, every=self.options.stream_every):
                        yield event
            finally:
                with run.stepping:  # a cancellation that did not wait for the worker waits here for its step
                    run.reports.close()
                if self.checkpoint.net.embed_tokens.weight.is_cuda:
                    torch.cuda.empty_cache()
            generation = run.generation()
        for call in generation.tool_calls:
            yield ToolCallEvent(tool_call=call)
        yield UsageEvent(usage=generation.usage)
        yield DoneEvent(generation=generation)

    def _start(self, request: GenerationRequest) -> _Run:
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
        reports = generate_canvases(
            net,
            torch.tensor([prompt_ids], device=device),
            settings,
            max_canvases=canvases_for(max_tokens, net.config.canvas_length),
            stop_token_ids=defaults.eos_token_ids,
            pad_token_id=defaults.pad_token_id,
            generator=generator,
        )
        return _Run(
            backend=self.name,
            chat=self.chat,
            reports=reports,
            prompt_tokens=len(prompt_ids),
            max_tokens=max_tokens,
            stop_tokens=set(defaults.eos_token_ids),
            stop_strings=request.stop,
            pad_token_id=defaults.pad_token_id,
        )


def _next(run: _Run) -> DenoiseStep | CanvasCommitted | None:
    with run.stepping:
        return next(run.reports, None)


@dataclass
class _Run:
    """One generation's progress: committed tokens, text parsed so far, statistics."""

    backend: str
    chat: ChatFormat
    reports: Iterator[DenoiseStep | CanvasCommitted]
    prompt_tokens: int
    max_tokens: int
    stop_tokens: set[int]
    stop_strings: list[str]
    pad_token_id: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    stepping: threading.Lock = field(default_factory=threading.Lock)
    finish_reason: FinishReason = "length"
    complete: bool = False
    canvases: int = 0
    steps: int = 0
    decoder_passes: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_canvas_s: float | None = None
    parser: Gemma4StreamParser = field(default_factory=Gemma4StreamParser)

    def handle(self, report: DenoiseStep | CanvasCommitted, *, drafts: bool, every: int) -> list[StreamEvent]:
        if isinstance(report, DenoiseStep):
            if not drafts or report.step % every:
                return []
            return [
                DenoiseStepEvent(
                    canvas_index=report.canvas_index,
                    step=report.step,
                    draft_text=self.chat.decode(report.draft[0].tolist(), skip_special_tokens=True),
                    accepted_fraction=float(report.accepted_fraction[0]),
                    mean_entropy=float(report.mean_entropy[0]),
                )
            ]
        return self._commit(report)

    def _commit(self, report: CanvasCommitted) -> list[StreamEvent]:
        self.canvases += 1
        self.steps += report.steps
        self.decoder_passes = int(report.decoder_passes[0])
        self.first_canvas_s = self.first_canvas_s or time.perf_counter() - self.started
        for token in report.tokens[0].tolist():
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
        events.append(CanvasEvent(canvas_index=report.canvas_index, text_delta=answer, steps=report.steps))
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
