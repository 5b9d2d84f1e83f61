"""A request's progress through a local engine: each committed canvas's tokens turned into stream events and, at
the end, its `Generation`. The model's text is parsed once, canvas by canvas, by the core's `GenerationAccumulator`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from diffusiongemma_sdk._accumulator import GenerationAccumulator
from diffusiongemma_sdk._local.chat import ForcedCall
from diffusiongemma_sdk._types import DenoiseStepEvent, FinishReason, StreamEvent, ToolCall, ToolCallEvent, Usage

__all__ = ["Detokenizer", "RequestProgress"]


class Detokenizer(Protocol):
    """Token ids to text, as the engine's tokenizer spells them."""

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str: ...


@dataclass
class RequestProgress:
    """One request's progress: committed tokens, text decoded so far, the events they make, statistics.

    With a `forced` call, the prompt ends with the call's opening, so the answer continues it; `drafts` says whether
    the reader asked for each step's draft (decoded only then, every `every` steps)."""

    backend: str
    chat: Detokenizer
    prompt_tokens: int
    max_tokens: int
    stop_tokens: set[int]
    stop_strings: list[str]
    pad_token_id: int
    drafts: bool = False
    every: int = 1
    forced: ForcedCall | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason = "length"
    complete: bool = False
    canvases: int = 0
    steps: int = 0
    decoder_passes: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_canvas_s: float | None = None
    accumulator: GenerationAccumulator = field(init=False)

    def __post_init__(self) -> None:
        names = self.forced.names if self.forced is not None else ()
        self.accumulator = GenerationAccumulator(self.backend, call_names=names)
        if self.forced is not None:
            self.accumulator.add_model_text(self.forced.opening)  # opens the call; makes no event yet

    def wants_draft(self, step: int) -> bool:
        """Whether the reader gets step `step`'s draft (so whether to decode it at all)."""
        return self.drafts and step % self.every == 0

    def draft(self, step: int, draft: list[int], accepted_fraction: float, mean_entropy: float) -> list[StreamEvent]:
        """The event of one denoising step's argmax canvas, `draft`."""
        return [
            DenoiseStepEvent(
                canvas_index=self.canvases,
                step=step,
                draft_text=self.chat.decode(draft, skip_special_tokens=True),
                accepted_fraction=accepted_fraction,
                mean_entropy=mean_entropy,
            )
        ]

    def commit(self, tokens: list[int], *, steps: int, decoder_passes: int) -> list[StreamEvent]:
        """The events of a committed canvas: its tokens up to a stop token, `max_tokens` or a stop string.
        `steps` are its denoising steps, `decoder_passes` the request's so far."""
        self.canvases += 1
        self.steps += steps
        self.decoder_passes = decoder_passes
        self.first_canvas_s = self.first_canvas_s or time.perf_counter() - self.started
        for token in tokens:
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
        return self.accumulator.add_model_text(delta, steps=steps, final=self.complete)

    def final_events(self) -> list[StreamEvent]:
        """The stream's last events once the request is complete: a forced call if the model wrote none, its
        usage, and the `DoneEvent`."""
        events: list[StreamEvent] = []
        if self.forced is not None and not self.accumulator.tool_calls:  # the model wrote no call we can read
            events.append(ToolCallEvent(tool_call=ToolCall(name=self.forced.names[0], raw_arguments=self.text)))
            self.accumulator.add(events[0])
        completion = len(self.tokens)
        usage = Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            canvases=self.canvases,
            denoising_steps=self.steps,
            tokens_per_forward=completion / self.decoder_passes if self.decoder_passes else None,
            ttft_s=self.first_canvas_s,
            wall_s=time.perf_counter() - self.started,
        )
        return events + self.accumulator.final_events(self.finish_reason, usage=usage)
