"""`diffusiongemma generate`: one answer to one prompt, with a live view of the canvases on a terminal."""

from __future__ import annotations

import sys
from functools import partial
from typing import Annotated, Any

import typer
from rich.console import Console

from diffusiongemma_sdk._cli.failures import reporting_failures
from diffusiongemma_sdk._cli.interrupts import run_interruptible
from diffusiongemma_sdk._cli.live import LiveCanvas, live_view, run_generation
from diffusiongemma_sdk._cli.options import (
    OUTPUT_PANEL,
    REQUEST_PANEL,
    BackendChoice,
    BackendOption,
    BackendOptionsOption,
    DebugOption,
    MaxTokensOption,
    NoLiveOption,
    SeedOption,
    StepsOption,
    SystemOption,
    backend_choice,
    request_options,
)
from diffusiongemma_sdk._cli.report import print_generation
from diffusiongemma_sdk._errors import InvalidRequestError
from diffusiongemma_sdk._messages import PromptInput
from diffusiongemma_sdk._types import Generation, Message

__all__ = ["generate"]


def generate(
    prompt: Annotated[
        str, typer.Argument(metavar="PROMPT", help="What to ask; '-' reads it from stdin.", show_default=False)
    ],
    backend: BackendOption = None,
    backend_option: BackendOptionsOption = None,
    max_tokens: MaxTokensOption = None,
    thinking: Annotated[
        bool, typer.Option(help="Let the model reason before it answers.", rich_help_panel=REQUEST_PANEL)
    ] = False,
    steps: StepsOption = None,
    seed: SeedOption = None,
    system: SystemOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the whole Generation as JSON on stdout, and nothing else.",
            rich_help_panel=OUTPUT_PANEL,
        ),
    ] = False,
    no_live: NoLiveOption = False,
    debug: DebugOption = False,
) -> None:
    """Generate one answer to PROMPT.

    On an interactive terminal the canvases are drawn live while they denoise
    (TTY_COMPATIBLE=1 and TTY_INTERACTIVE=1 force it, as anywhere with rich).
    stdout: the answer, then any tool calls; with --json only the Generation.
    stderr: the reasoning (dimmed), then one stats line: canvases, denoising
    steps, tokens, seconds and tokens/s.
    """
    with reporting_failures(debug):
        choice = backend_choice(backend, backend_option)
        request = request_options(max_tokens=max_tokens, steps=steps, seed=seed, thinking=thinking)
        conversation = _conversation(prompt, system)
        with live_view(Console(), not (as_json or no_live)) as live:
            generation, elapsed = run_interruptible(partial(_run, choice, conversation, request, live))
        if as_json:
            typer.echo(generation.model_dump_json())
        else:
            print_generation(generation, elapsed, Console(stderr=True))


async def _run(
    choice: BackendChoice, prompt: PromptInput, request: dict[str, Any], live: LiveCanvas | None
) -> tuple[Generation, float]:
    """The generation and the seconds it took (backend loading left out); streamed when there is a live view."""
    async with choice.client() as client:
        return await run_generation(client, prompt, request, live)


def _conversation(prompt: str, system: str | None) -> PromptInput:
    """The prompt ('-': stdin) as the user's turn, after the system message if there is one."""
    text = sys.stdin.read().rstrip() if prompt == "-" else prompt
    if not text.strip():
        raise InvalidRequestError("The prompt is empty." + (" Nothing came on stdin." if prompt == "-" else ""))
    if system is None:
        return text
    return [Message(role="system", content=system), Message(role="user", content=text)]
