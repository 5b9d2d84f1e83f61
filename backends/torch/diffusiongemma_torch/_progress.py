"""A request's progress through the engine: its row of each report turned into stream events and, at the end, its
`Generation`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from diffusiongemma_sdk import (
    CanvasEvent,
    DenoiseStepEvent,
    FinishReason,
    Generation,
    ReasoningEvent,
    StreamEvent,
    Usage,
)
from diffusiongemma_sdk._gemma4 import Gemma4StreamParser, parse_gemma4
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch._engine import CanvasCommitted, DenoiseStep

__all__ = ["RequestProgress"]


@dataclass
class RequestProgress:
    """One request's progress, from its row of the engine's reports: committed tokens, text parsed so far, the
    events they make, statistics."""

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
                    canvas_index=self.canvases,
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
        events.append(CanvasEvent(canvas_index=self.canvases - 1, text_delta=answer, steps=steps))
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
