"""The end of a generation: the answer on stdout; reasoning and one stats line on stderr."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.text import Text

from diffusiongemma_sdk._types import Generation, Usage

__all__ = ["print_generation", "stats_line"]


def print_generation(generation: Generation, elapsed: float, err: Console) -> None:
    """Print the answer and its tool calls on stdout, the reasoning (dimmed) and the stats line on `err`.

    `elapsed` is the time measured around the request, used when the backend reports none.
    """
    if generation.reasoning:
        err.print(Text(generation.reasoning, style="dim"), soft_wrap=True)
    typer.echo(generation.text)
    for call in generation.tool_calls:
        typer.echo(f"tool call: {call.name} {json.dumps(call.arguments, ensure_ascii=False)}")
    err.print(Text(stats_line(generation.usage, elapsed), style="dim"), soft_wrap=True)


def stats_line(usage: Usage, elapsed: float) -> str:
    """`2 canvases, 14 denoising steps (7.0 per canvas), 32 tokens, 1.84 s, 17.4 tokens/s`; unknown counts are left
    out, and the backend's own wall time is preferred to `elapsed`."""
    parts = []
    if usage.canvases is not None:
        parts.append(_count(usage.canvases, "canvas", "canvases"))
    if usage.denoising_steps is not None:
        steps = _count(usage.denoising_steps, "denoising step", "denoising steps")
        parts.append(f"{steps} ({usage.denoising_steps / usage.canvases:.1f} per canvas)" if usage.canvases else steps)
    tokens = usage.completion_tokens
    if tokens:
        parts.append(_count(tokens, "token", "tokens"))
    seconds = usage.wall_s if usage.wall_s is not None else elapsed
    parts.append(f"{seconds:.2f} s")
    if tokens and seconds > 0:
        parts.append(f"{tokens / seconds:.1f} tokens/s")
    return ", ".join(parts)


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"
