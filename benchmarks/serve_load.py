"""Load on `diffusiongemma serve`: many concurrent OpenAI clients, every answer checked against its own prompt.

Starts `diffusiongemma serve --backend torch:demo` on a free port (its own process), then sends `--requests` chat
completions from `--concurrency` concurrent openai-python callers: a mix of the demo model's tasks (sort, reverse, the
two turns of the `add` tool call; `diffusiongemma_torch.demo.tasks`), each with its expected answer and its own seed.
Before the load, the same backend answers every task in this process, one at a time, with the same seed: each answer
from the server must be exactly that one (text, tool calls, token count), which shows that every answer belongs to
its own prompt whatever the model knows. Prints throughput (requests/s, completion tokens/s), client-side latency
percentiles, the server's own time per request, how many answers match the engine's, how many are right
(`tasks.check`: the model's quality), and how many requests failed. A wrong answer that is exactly right for another
prompt of the run is counted as misrouted.

Each request carries its own diffusion settings, one of `SETTINGS` in turn (`--same-settings` sends none), as
clients of a shared server do. `--max-batch 1,32` runs the load once per value, each against its own `serve -o
max_batch=N` process, and ends with a table of the runs and each one's throughput against the first's: with 1 the
engine serves one generation at a time (requests queue; latency is mostly waiting), with N up to N requests share
every denoising pass (continuous batching).

Exit code 1 if any request failed (no answer, a non-200 status, any 5xx), differs from the engine's answer or was
misrouted.

    .venv/bin/python benchmarks/serve_load.py [--requests 200] [--concurrency 32] [--backend SPEC]
        [--max-batch 1,32] [--same-settings] [--no-reference] [--json docs/data/serve_load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import APIStatusError, AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support, run as a script

from benchmarks._results import write_bars
from diffusiongemma_sdk import DiffusionGemma, Generation, Message, ToolCall, Usage
from diffusiongemma_torch.demo.tasks import DemoTask, add_task, check, reverse_task, sort_task
from tests.support.serving import serve_command

LOAD_SEED = 424242  # the prompts: the same on every run
KINDS = ("sort", "reverse", "add: call", "add: answer")
SETTINGS: list[dict[str, Any] | None] = [
    None,  # the checkpoint's own
    {"max_denoising_steps": 16},
    {"entropy_bound": 0.05},
    {"t_max": 0.3, "t_min": 0.05},
    {"max_denoising_steps": 24, "confidence_threshold": 0.001},
]
"""The diffusion settings requests carry, one after the other (request i: `SETTINGS[i % len(SETTINGS)]`)."""


@dataclass
class Outcome:
    """One request: its task, what came back, and how long it took."""

    task: DemoTask
    latency_s: float
    status: int | None = None  # None: no HTTP answer at all
    error: str | None = None
    generation: Generation | None = None


def make_tasks(count: int, rng: random.Random) -> list[DemoTask]:
    """`count` demo tasks, the four kinds in turn."""
    makers = {
        "sort": lambda: sort_task(rng),
        "reverse": lambda: reverse_task(rng),
        "add: call": lambda: add_task(rng),
        "add: answer": lambda: add_task(rng, answered_call=True),
    }
    return [makers[KINDS[index % len(KINDS)]]() for index in range(count)]


def openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """SDK messages as an OpenAI client sends them."""
    wire: list[dict[str, Any]] = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.text}
        if message.tool_calls:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in message.tool_calls
            ]
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        wire.append(entry)
    return wire


def to_generation(completion: Any) -> Generation:
    """The parts of a `chat.completion` that `tasks.check` reads, plus the usage."""
    choice = completion.choices[0]
    calls = [
        ToolCall(id=call.id, name=call.function.name, arguments=json.loads(call.function.arguments or "{}"))
        for call in choice.message.tool_calls or []
    ]
    usage = completion.usage
    extra = (usage.model_extra or {}) if usage else {}
    return Generation(
        text=choice.message.content or "",
        tool_calls=calls,
        usage=Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            total_tokens=usage.total_tokens if usage else 0,
            wall_s=extra.get("wall_s"),
        ),
    )


def settings_of(index: int, mixed: bool) -> dict[str, Any] | None:
    return SETTINGS[index % len(SETTINGS)] if mixed else None


async def run_load(
    base_url: str, model: str, tasks: list[DemoTask], concurrency: int, mixed: bool
) -> tuple[list[Outcome], float]:
    """Every task sent once by `concurrency` callers; the outcomes in task order and the wall time."""
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    outcomes: list[Outcome | None] = [None] * len(tasks)
    queue = iter(range(len(tasks)))

    async def one(index: int) -> Outcome:
        task = tasks[index]
        tools = [{"type": "function", "function": tool.model_dump()} for tool in task.tools]
        started = time.perf_counter()
        try:
            completion = await client.chat.completions.create(
                model=model,
                messages=openai_messages(task.messages),  # type: ignore[arg-type]
                tools=tools or None,  # type: ignore[arg-type]
                seed=index,
                extra_body={"diffusion": settings} if (settings := settings_of(index, mixed)) else None,
            )
        except APIStatusError as exc:
            return Outcome(task, time.perf_counter() - started, status=exc.status_code, error=str(exc))
        except Exception as exc:
            return Outcome(task, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
        return Outcome(task, time.perf_counter() - started, status=200, generation=to_generation(completion))

    async def caller() -> None:
        for index in queue:
            outcomes[index] = await one(index)

    await one(len(tasks) - 1)  # warm-up, not counted: the first request pays for lazy initialisation
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return [outcome for outcome in outcomes if outcome is not None], elapsed


def engine_answers(backend: str, tasks: list[DemoTask], mixed: bool) -> list[Generation]:
    """What the backend answers in this process, one task at a time, with the seeds and settings the load uses."""
    with DiffusionGemma(backend) as engine:
        return [
            engine.generate(task.messages, tools=task.tools, seed=index, diffusion=settings_of(index, mixed))
            for index, task in enumerate(tasks)
        ]


def same_answer(served: Generation, engine: Generation) -> bool:
    return (
        served.text.strip() == engine.text.strip()
        and [(c.name, c.arguments) for c in served.tool_calls] == [(c.name, c.arguments) for c in engine.tool_calls]
        and served.usage.completion_tokens == engine.usage.completion_tokens
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(
    outcomes: list[Outcome], elapsed: float, concurrency: int, engine: list[Generation] | None
) -> tuple[bool, dict[str, Any]]:
    """Print the run's table; True when every request was answered, as the engine answers it, and none was
    misrouted; and the run's summary."""
    answered = [(o, o.generation) for o in outcomes if o.status == 200 and o.generation is not None]
    positions = {id(o): index for index, o in enumerate(outcomes)}
    differing = [o for o, g in answered if engine is not None and not same_answer(g, engine[positions[id(o)]])]
    verdicts = {id(o): check(o.task, generation) for o, generation in answered}
    wrong = [(o, generation) for o, generation in answered if not verdicts[id(o)]]
    misrouted = [
        o for o, generation in wrong if any(_distinctive(x.task) and check(x.task, generation) for x in outcomes)
    ]
    failed = [o for o in outcomes if o.status != 200 or o.generation is None]
    server_errors = [o for o in failed if o.status is not None and o.status >= 500]
    latencies = [o.latency_s for o in outcomes]
    tokens = sum(generation.usage.completion_tokens for _, generation in answered)
    service = [g.usage.wall_s for _, g in answered if g.usage.wall_s is not None]

    rows = [
        ("requests", f"{len(outcomes)} at concurrency {concurrency}"),
        ("wall time", f"{elapsed:.1f} s"),
        ("throughput", f"{len(answered) / elapsed:.2f} requests/s, {tokens / elapsed:.1f} completion tokens/s"),
        (
            "latency (client)",
            f"p50 {percentile(latencies, 0.5):.2f} s, p90 {percentile(latencies, 0.9):.2f} s, "
            f"p99 {percentile(latencies, 0.99):.2f} s, max {max(latencies):.2f} s",
        ),
        (
            "generation (server)",
            f"mean {statistics.mean(service):.3f} s, p50 {percentile(service, 0.5):.3f} s, max {max(service):.3f} s"
            if service
            else "n/a",
        ),
        (
            "same as engine",
            f"{len(answered) - len(differing)}/{len(outcomes)}" if engine is not None else "not checked",
        ),
        ("correct (check)", f"{sum(verdicts.values())}/{len(outcomes)}"),
        ("wrong answer", f"{len(wrong)} (misrouted: {len(misrouted)})"),
        ("failed", f"{len(failed)} (5xx: {len(server_errors)})"),
    ]
    for kind in KINDS:
        of_kind = [o for o in outcomes if _kind(o.task) == kind]
        rows.append((f"  {kind}", f"{sum(verdicts.get(id(o), False) for o in of_kind)}/{len(of_kind)} correct"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for outcome in failed[:5]:
        print(f"failed: status {outcome.status}: {outcome.error}", file=sys.stderr)
    for outcome, generation in wrong[:5]:
        got = generation.text or [(c.name, c.arguments) for c in generation.tool_calls]
        print(f"wrong: {outcome.task.messages[0].text!r}: got {got!r}", file=sys.stderr)
    for outcome in differing[:5]:
        print(f"differs from the engine: {outcome.task.messages[0].text!r}", file=sys.stderr)
    summary = {
        "requests_per_s": len(answered) / elapsed,
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "same_as_engine": None if engine is None else len(answered) - len(differing),
        "failed": len(failed),
    }
    return not failed and not differing and not misrouted, summary


def _distinctive(task: DemoTask) -> bool:
    """An answer nobody gives by chance: a call with its two operands, or a list of several numbers or words (a bare
    sum can be a model's wrong sum for another question)."""
    return task.expected_call is not None or " " in (task.expected_text or "")


def _kind(task: DemoTask) -> str:
    if task.kind != "add":
        return task.kind
    return "add: call" if task.expected_call is not None else "add: answer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests in the run")
    parser.add_argument("--concurrency", type=int, default=32, help="callers sending at once")
    parser.add_argument("--backend", default="torch:demo", help="the backend spec `serve` serves")
    parser.add_argument("--no-reference", action="store_true", help="skip the in-process answers to compare with")
    parser.add_argument("--same-settings", action="store_true", help="every request with the checkpoint's settings")
    parser.add_argument("--max-batch", default="1,32", help="the torch backend's max_batch values to run, in order")
    parser.add_argument("--json", type=Path, help="also write the runs' table to this file (docs/data/)")
    args = parser.parse_args()
    mixed = not args.same_settings

    tasks = make_tasks(args.requests, random.Random(LOAD_SEED))
    engine = None
    if not args.no_reference:
        started = time.perf_counter()
        engine = engine_answers(args.backend, tasks, mixed)
        print(f"engine answers in this process: {len(engine)} in {time.perf_counter() - started:.1f} s", flush=True)
    runs: list[dict[str, Any]] = []
    all_ok = True
    for max_batch in [int(value) for value in args.max_batch.split(",")]:
        options = ["-o", f"max_batch={max_batch}"] if max_batch > 1 else []
        print(f"\nserver: diffusiongemma serve --backend {args.backend} {' '.join(options)} (its own process)")
        with serve_command(args.backend, startup_timeout=120, options=options) as server:
            outcomes, elapsed = asyncio.run(run_load(server.base, server.model, tasks, args.concurrency, mixed))
        ok, summary = report(outcomes, elapsed, args.concurrency, engine)
        all_ok &= ok
        runs.append(
            {
                "max_batch": max_batch,
                **summary,
                "ratio": summary["requests_per_s"] / runs[0]["requests_per_s"] if runs else 1.0,
            }
        )
    kind = "mixed diffusion settings" if mixed else "the checkpoint's settings"
    print(f"\n{args.requests} requests at concurrency {args.concurrency}, {kind}, {args.backend}")
    print(f"{'max_batch':>9}  {'req/s':>7}  {'p50 s':>6}  {'p99 s':>6}  {'same':>7}  {'failed':>6}  {'ratio':>6}")
    for run in runs:
        same = "-" if run["same_as_engine"] is None else f"{run['same_as_engine']}/{args.requests}"
        print(
            f"{run['max_batch']:>9}  {run['requests_per_s']:>7.2f}  {run['p50_s']:>6.2f}  {run['p99_s']:>6.2f}  "
            f"{same:>7}  {run['failed']:>6}  {run['ratio']:>5.2f}x"
        )
    write_bars(
        args.json,
        title=f"serve under load: {args.requests} requests at concurrency {args.concurrency}, {kind}",
        rows=[{**run, "max_batch": f"max_batch={run['max_batch']}"} for run in runs],
        label="max_batch",
        value="requests_per_s",
        value_label="requests/s",
    )
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
