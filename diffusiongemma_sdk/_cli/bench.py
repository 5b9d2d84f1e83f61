"""`diffusiongemma bench`: latency and throughput of N streamed generations, as a table or as JSON."""

from __future__ import annotations

import random
import time
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Annotated, Any

import anyio
import typer
from pydantic import BaseModel, Field, computed_field
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from diffusiongemma_sdk._cli.failures import reporting_failures
from diffusiongemma_sdk._cli.interrupts import run_interruptible
from diffusiongemma_sdk._cli.options import (
    BackendChoice,
    BackendOption,
    BackendOptionsOption,
    DebugOption,
    MaxTokensOption,
    SeedOption,
    StepsOption,
    backend_choice,
    request_options,
    require_positive,
)
from diffusiongemma_sdk._client import AsyncDiffusionGemma
from diffusiongemma_sdk._messages import PromptInput
from diffusiongemma_sdk._types import CanvasEvent

__all__ = ["bench"]

DEMO_BACKEND = "torch:demo"
# Prompts in the demo model's formats, which any DiffusionGemma answers too.
FALLBACK_PROMPTS = (
    "Sort these numbers: 42 7 19 88 3 56 21 64 15 90",
    "Reverse these words: red green blue yellow black white",
    "Sort these numbers: 5 31 9 77 12 1",
    "Reverse these words: cat dog bird fish horse",
)
COUNTED = (
    "tokens: completion tokens of an answer without reasoning (thinking is off); '-' when it reasoned anyway, as "
    "usage does not count reasoning apart. TTFT: until the first committed answer text. tokens/forward: completion "
    "tokens / denoising steps. 'all': tokens/s over the wall time of the whole run, and the mean TTFT."
)


class Measurement(BaseModel):
    """One request's counts and times, or the whole run's (counts summed, seconds of the run, mean TTFT)."""

    completion_tokens: int = Field(description="usage.completion_tokens: every generated token, reasoning included.")
    content_tokens: int | None = Field(
        description="completion_tokens of answers without reasoning; None when an answer carried reasoning, "
        "whose tokens usage does not count apart."
    )
    seconds: float = Field(description="From sending the request to the end of the stream.")
    ttft_s: float | None = Field(description="From sending the request to the first committed answer text.")
    canvases: int | None
    denoising_steps: int | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tokens_per_s(self) -> float | None:
        """Content tokens per second."""
        return None if self.content_tokens is None or self.seconds <= 0 else self.content_tokens / self.seconds

    @computed_field  # type: ignore[prop-decorator]
    @property
    def steps_per_canvas(self) -> float | None:
        """Denoising steps per canvas."""
        return _ratio(self.denoising_steps, self.canvases)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tokens_per_forward(self) -> float | None:
        """Completion tokens per denoising step (one forward pass of the decoder each)."""
        return _ratio(self.completion_tokens, self.denoising_steps)


class BenchReport(BaseModel):
    """What `bench --json` prints."""

    backend: str
    concurrency: int
    requests: list[Measurement]
    total: Measurement


def bench(
    backend: BackendOption = None,
    backend_option: BackendOptionsOption = None,
    prompts: Annotated[int, typer.Option(metavar="N", help="How many generations to run.")] = 8,
    prompt: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT",
            help="The prompt of every generation. Default: on torch:demo the demo model's tasks, drawn with --seed "
            "(else 0); elsewhere a fixed list of sort and reverse prompts.",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(metavar="N", help="How many generations run at once.")] = 1,
    max_tokens: MaxTokensOption = None,
    steps: StepsOption = None,
    seed: SeedOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")] = False,
    debug: DebugOption = False,
) -> None:
    """Stream N generations and measure tokens/s, time to first token and the diffusion statistics.

    Tokens are the completion tokens of answers without reasoning (thinking is
    turned off where the backend allows it); time to first token runs to the
    first committed answer text; tokens per forward are completion tokens per
    denoising step. The 'all' row divides all tokens by the wall time of the run.
    stdout: a table, one row per generation and one for all; or with --json one
    object with the same numbers.
    """
    with reporting_failures(debug):
        require_positive(prompts=prompts, concurrency=concurrency)
        choice = backend_choice(backend, backend_option)
        request = request_options(max_tokens=max_tokens, steps=steps, seed=seed, thinking=None)
        err = Console(stderr=True)
        progress: AbstractContextManager[Status | None] = (
            err.status(f"0 of {prompts} done") if err.is_interactive and not as_json else nullcontext()
        )
        with progress as status:
            report = run_interruptible(partial(_bench, choice, prompts, prompt, concurrency, request, status, err))
        if as_json:
            typer.echo(report.model_dump_json())
        else:
            Console().print(_table(report))


async def _bench(
    choice: BackendChoice,
    count: int,
    prompt: str | None,
    concurrency: int,
    request: dict[str, Any],
    status: Status | None,
    err: Console,
) -> BenchReport:
    """Run the generations, at most `concurrency` at once; the first failure stops them all and is raised."""
    async with choice.client() as client:
        name = client.backend.name
        capabilities = await client.backend.discover_capabilities()
        request = {**request, "thinking": False if capabilities.thinking else None}  # tokens without reasoning
        if capabilities.max_concurrency is not None and concurrency > capabilities.max_concurrency:
            err.print(
                Text(
                    f"note: {name} serves {capabilities.max_concurrency} at a time; the other requests wait, "
                    "and their seconds include the wait.",
                    style="dim",
                ),
                soft_wrap=True,
            )
        limiter = anyio.CapacityLimiter(concurrency)
        results: list[Measurement | None] = [None] * count
        failures: list[Exception] = []

        async def measure(index: int, prompt: PromptInput, scope: anyio.CancelScope) -> None:
            async with limiter:
                try:
                    results[index] = await _measure(client, prompt, request)
                except Exception as error:
                    failures.append(error)
                    scope.cancel()
            if status is not None:
                status.update(f"{count - results.count(None)} of {count} done")

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for index, one in enumerate(_prompts(count, prompt, name, seed=request["seed"])):
                group.start_soon(measure, index, one, group.cancel_scope)
        seconds = time.perf_counter() - started
        if failures:
            raise failures[0]
        measurements = [result for result in results if result is not None]
        return BenchReport(
            backend=name, concurrency=concurrency, requests=measurements, total=_total(measurements, seconds)
        )


async def _measure(client: AsyncDiffusionGemma, prompt: PromptInput, request: dict[str, Any]) -> Measurement:
    started = time.perf_counter()
    first_text: float | None = None
    async with client.stream(prompt, **request) as stream:
        async for event in stream:
            if first_text is None and isinstance(event, CanvasEvent) and event.text_delta:
                first_text = time.perf_counter() - started
        generation = await stream.final()
    usage = generation.usage
    return Measurement(
        completion_tokens=usage.completion_tokens,
        content_tokens=None if generation.reasoning else usage.completion_tokens,
        seconds=time.perf_counter() - started,
        ttft_s=first_text,
        canvases=usage.canvases,
        denoising_steps=usage.denoising_steps,
    )


def _prompts(count: int, prompt: str | None, backend: str, *, seed: int | None) -> list[PromptInput]:
    """`prompt` repeated; else the demo tasks (seeded) on the demo model, when they are installed; else a fixed list."""
    if prompt is not None:
        return [prompt] * count
    if backend == DEMO_BACKEND:
        try:
            from diffusiongemma_torch.demo.tasks import reverse_task, sort_task
        except ImportError:
            pass
        else:
            rng = random.Random(0 if seed is None else seed)
            return [(reverse_task if index % 2 else sort_task)(rng).messages for index in range(count)]
    return [FALLBACK_PROMPTS[index % len(FALLBACK_PROMPTS)] for index in range(count)]


def _total(measurements: list[Measurement], seconds: float) -> Measurement:
    """The run as a whole: counts summed (unknown if unknown for one request), the run's seconds, the mean TTFT."""
    ttfts = [m.ttft_s for m in measurements if m.ttft_s is not None]
    return Measurement(
        completion_tokens=sum(m.completion_tokens for m in measurements),
        content_tokens=_sum([m.content_tokens for m in measurements]),
        seconds=seconds,
        ttft_s=sum(ttfts) / len(ttfts) if ttfts else None,
        canvases=_sum([m.canvases for m in measurements]),
        denoising_steps=_sum([m.denoising_steps for m in measurements]),
    )


def _table(report: BenchReport) -> Table:
    columns = ("", "tokens", "TTFT s", "seconds", "tokens/s", "canvases", "steps/canvas", "tokens/forward")
    table = Table(
        *columns,
        title=f"{report.backend}, {len(report.requests)} generations, {report.concurrency} at a time",
        title_justify="left",
        caption=COUNTED,
        caption_justify="left",
    )
    for column in table.columns[1:]:
        column.justify = "right"
    for index, measurement in enumerate(report.requests, start=1):
        table.add_row(str(index), *_cells(measurement))
    table.add_section()
    table.add_row("all", *_cells(report.total), style="bold")
    return table


def _cells(m: Measurement) -> list[str]:
    return [
        _shown(m.content_tokens),
        _shown(m.ttft_s, ".2f"),
        _shown(m.seconds, ".2f"),
        _shown(m.tokens_per_s, ".1f"),
        _shown(m.canvases),
        _shown(m.steps_per_canvas, ".1f"),
        _shown(m.tokens_per_forward, ".2f"),
    ]


def _shown(value: float | None, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _sum(values: list[int | None]) -> int | None:
    return None if any(value is None for value in values) else sum(value or 0 for value in values)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator
