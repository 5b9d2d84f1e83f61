"""`GenerationAccumulator`: stream events in, `Generation` out, the one place where a generation is assembled.

Every path uses it: the client's stream (`final()`, `partial()`), the remote backend (server chunks), the local
engines (committed canvases of raw model text, parsed once as they arrive) and, through the client, the server.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from diffusiongemma_sdk._gemma4 import Gemma4StreamParser, Segment
from diffusiongemma_sdk._types import (
    CanvasEvent,
    DoneEvent,
    FinishReason,
    Generation,
    ReasoningEvent,
    StreamEvent,
    ToolCall,
    ToolCallEvent,
    Usage,
    UsageEvent,
)

__all__ = ["GenerationAccumulator"]


class GenerationAccumulator:
    """Collects a generation's events and builds its `Generation`.

    Backends that see raw model text (Gemma 4 markup included) hand it to `add_model_text`, which parses it
    incrementally and returns the events it makes (reasoning, committed text, complete tool calls); events made
    elsewhere go through `add`. `finish` builds the result; `partial` what has arrived so far.

    With `call_names` (a local engine forcing a call of one of these tools), a parsed call that names another tool
    is taken as a misspelling of the closest of them.
    """

    def __init__(self, backend: str = "", *, call_names: Sequence[str] = ()) -> None:
        self.backend = backend
        self._call_names = list(call_names)
        self._text: list[str] = []
        self._reasoning: list[str] | None = None
        self._tool_calls: list[ToolCall] = []
        self._usage: Usage | None = None
        self._parser = Gemma4StreamParser()
        self._canvases = 0

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The complete tool calls so far."""
        return list(self._tool_calls)

    @property
    def text(self) -> str:
        """The answer text so far."""
        return "".join(self._text)

    def add(self, event: StreamEvent) -> None:
        """Record one event (denoise drafts and the final `DoneEvent` change nothing)."""
        if isinstance(event, CanvasEvent):
            self._text.append(event.text_delta)
            self._canvases = max(self._canvases, event.canvas_index + 1)
        elif isinstance(event, ReasoningEvent):
            self._reasoning = [*(self._reasoning or []), event.text_delta]
        elif isinstance(event, ToolCallEvent):
            self._tool_calls.append(event.tool_call)
        elif isinstance(event, UsageEvent):
            self._usage = event.usage

    def add_model_text(self, text: str, *, steps: int | None = None, final: bool = False) -> list[StreamEvent]:
        """Parse the next piece of the model's raw output and return (and record) the events it completes.

        Call it once per committed canvas, with `steps` its denoising steps (a canvas event is then made even when
        the canvas holds no answer text), or once per piece of text a server sent. `final` flushes what the parser
        holds back at the end of the output.
        """
        segments = self._parser.feed(text) + (self._parser.close() if final else [])
        return self._events(segments, steps=steps)

    def close(self) -> list[StreamEvent]:
        """Flush what the parser holds back at the end of the output; return (and record) the events it makes."""
        return self._events(self._parser.close(), steps=None)

    def partial(self) -> Generation:
        """What has arrived so far, marked `cancelled`."""
        return self._generation("cancelled", self._usage or Usage())

    def finish(self, finish_reason: FinishReason, *, usage: Usage | None = None, **fields: Any) -> Generation:
        """The complete generation; with tool calls, a `stop` becomes `tool_calls`. `fields` are `Generation`'s
        (`model`, `id`, `extra`)."""
        if self._tool_calls and finish_reason == "stop":
            finish_reason = "tool_calls"
        return self._generation(finish_reason, usage or self._usage or Usage(), **fields)

    def final_events(self, finish_reason: FinishReason, *, usage: Usage, **fields: Any) -> list[StreamEvent]:
        """The last two events of a stream: its usage, then the `DoneEvent` with the finished generation."""
        self._usage = usage
        return [UsageEvent(usage=usage), DoneEvent(generation=self.finish(finish_reason, usage=usage, **fields))]

    def _generation(self, finish_reason: FinishReason, usage: Usage, **fields: Any) -> Generation:
        return Generation(
            text="".join(self._text).rstrip(),
            reasoning=None if self._reasoning is None else "".join(self._reasoning).strip(),
            tool_calls=list(self._tool_calls),
            finish_reason=finish_reason,
            usage=usage,
            backend=self.backend,
            **fields,
        )

    def _named(self, call: ToolCall) -> ToolCall:
        if not self._call_names or call.name in self._call_names:
            return call
        closest = difflib.get_close_matches(call.name, self._call_names, n=1, cutoff=0)[0]
        return call.model_copy(update={"name": closest})

    def _events(self, segments: list[Segment], *, steps: int | None) -> list[StreamEvent]:
        events: list[StreamEvent] = [ReasoningEvent(text_delta=s.text) for s in segments if s.kind == "reasoning"]
        answer = "".join(s.text for s in segments if s.kind == "text")
        if answer or steps is not None:
            events.append(CanvasEvent(canvas_index=self._canvases, text_delta=answer, steps=steps))
        events += [ToolCallEvent(tool_call=self._named(s.tool_call)) for s in segments if s.tool_call is not None]
        for event in events:
            self.add(event)
        return events
