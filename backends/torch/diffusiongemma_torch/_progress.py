"""A request's progress through the engine: its row of each report turned into stream events and, at the end, its
`Generation`. The model's text is parsed once, canvas by canvas, by the core's `GenerationAccumulator`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from diffusiongemma_sdk import (
    DenoiseStepEvent,
    FinishReason,
    GenerationAccumulator,
    StreamEvent,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from diffusiongemma_torch._chat import ChatFormat, ForcedCall
from diffusiongemma_torch._engine import CanvasCommitted, DenoiseStep

__all__ = ["RequestProgress"]


@dataclass
class RequestProgress:
    """One request's progress, from its row of the engine's reports: committed tokens, text decoded so far, the
    events they make, statistics. With a `forced` call, the prompt ends with the call's opening, so the answer
    continues it; `drafts` says whether the reader asked for each step's draft (decoded only then)."""

    backend: str
    chat: ChatFormat
    prompt_tokens: int
    max_tokens: int
    stop_tokens: set[int]
    stop_strings: list[str]
    pad_token_id: int
    drafts: bool = False
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

    def handle(self, report: DenoiseStep | CanvasCommitted, row: int, *, every: int) -> list[StreamEvent]:
        """The events row `row` of an engine report makes."""
        if isinstance(report, DenoiseStep):
            if not self.drafts or report.step % every or not report.denoised[row]:
                return []
            return [
                DenoiseStepEvent(
                    canvas_index=self.canvases,
                    step=report.step,
                    draft_text=self.chat.decode(report.draft[row].tolist(), skip_special_tokens=True),
                    accepted_fraction=float(report.accepted_fraction[row]),
                    mean_entropy=float(report.mean_entropy[row]),
                )
            ]
        return self._commit(report, row)

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
        return self.accumulator.add_model_text(delta, steps=steps, final=self.complete)
