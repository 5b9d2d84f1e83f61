"""The live view of a generation: committed text above, the canvas being denoised below, redrawn in place; and
running a generation into it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.segment import Segment
from rich.spinner import Spinner
from rich.text import Text

from diffusiongemma_sdk._client import AsyncDiffusionGemma
from diffusiongemma_sdk._messages import PromptInput
from diffusiongemma_sdk._types import CanvasEvent, DenoiseStepEvent, Generation, ReasoningEvent, StreamEvent

__all__ = ["LiveCanvas", "live_view", "run_generation"]


class LiveCanvas:
    """Shows a stream's events while they arrive; use as `with LiveCanvas(console) as view: view.show(event)`.

    Reasoning (dimmed) and committed text come first, then the draft of the canvas being denoised with its step,
    accepted fraction and mean entropy (canvases and steps counted from 1). Backends that send no `denoise_step`
    events show the text as it arrives. The view is cleared at the end, when the caller prints the result.
    """

    def __init__(self, console: Console) -> None:
        self._reasoning = ""
        self._text = ""
        self._step: DenoiseStepEvent | None = None
        self._waiting = Spinner("dots", Text("generating", style="dim"))
        self._live = Live(self, console=console, transient=True, refresh_per_second=8, vertical_overflow="visible")

    def __enter__(self) -> LiveCanvas:
        self._live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.stop()

    def show(self, event: StreamEvent) -> None:
        """Take in one event and redraw."""
        if isinstance(event, DenoiseStepEvent):
            self._step = event
        elif isinstance(event, CanvasEvent):
            self._text += event.text_delta
            self._step = None
        elif isinstance(event, ReasoningEvent):
            self._reasoning += event.text_delta
        self._live.refresh()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Draw the latest text that fits above the canvas, so the canvas stays in sight however long the text."""
        canvas = console.render_lines(self._canvas(), options, pad=False)
        text = console.render_lines(Group(*self._texts()), options, pad=False)
        room = max(options.size.height - len(canvas) - 1, 0)
        for line in text[max(len(text) - room, 0) :] + canvas:
            yield from line
            yield Segment.line()

    def _texts(self) -> list[Text]:
        texts = [Text(self._reasoning, style="dim")] if self._reasoning else []
        return [*texts, Text(self._text)] if self._text else texts

    def _canvas(self) -> RenderableType:
        step = self._step
        if step is None:
            return self._waiting
        return Panel(
            Text(step.draft_text),
            title=f"canvas {step.canvas_index + 1} | step {step.step}",
            subtitle=f"accepted {step.accepted_fraction:.0%} | entropy {step.mean_entropy:.2f}",
            border_style="dim",
        )


def live_view(console: Console, wanted: bool) -> AbstractContextManager[LiveCanvas | None]:
    """A `LiveCanvas` when it is `wanted` and `console` is an interactive terminal, else a context giving None."""
    return LiveCanvas(console) if wanted and console.is_interactive else nullcontext()


async def run_generation(
    client: AsyncDiffusionGemma, prompt: PromptInput, request: Mapping[str, Any], live: LiveCanvas | None
) -> tuple[Generation, float]:
    """The generation and the seconds it took; streamed into the live view when there is one."""
    started = time.perf_counter()
    if live is None:
        generation = await client.generate(prompt, **request)
    else:
        drafts = (await client.discover_capabilities()).denoise_stream  # drawn where the backend has them
        async with client.stream(prompt, **request, drafts=drafts) as stream:
            async for event in stream:
                live.show(event)
            generation = await stream.final()
    return generation, time.perf_counter() - started
