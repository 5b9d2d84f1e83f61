"""Accuracy of the bundled demo model on held-out demo tasks, at the default settings and across a step sweep.

    .venv/bin/python evals/demo_tasks.py [--backend torch:demo] [--prompts 100] [--sweep 4,8,16]

Prompts come from `diffusiongemma_torch.demo.tasks` with a seed the training never uses. Everything goes through the
public client, so any backend spec that serves the demo model can be evaluated (for example a `serve` instance).
Prints one table: exact match per task, valid tool-call rate, mean denoising steps per canvas and tokens per forward,
then sort by list length (2-5, 6-10, 11-20, 21-40 numbers) at the default settings.
`--json PATH` also writes the rows as JSON (docs/data/demo_tasks.json draws the site's accuracy-against-steps plot).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from diffusiongemma_sdk import AsyncDiffusionGemma, DiffusionParams, Generation
from diffusiongemma_torch.demo.tasks import DemoTask, add_task, check, reverse_task, sort_task

EVAL_SEED = 20261127
TASKS = {
    "sort": lambda rng: sort_task(rng),
    "reverse": lambda rng: reverse_task(rng),
    "add: call": lambda rng: add_task(rng),
    "add: answer": lambda rng: add_task(rng, answered_call=True),
}
SORT_BUCKETS = [(2, 5), (6, 10), (11, 20), (21, 40)]
"""List lengths of the by-length sort rows (each row draws its lengths uniformly from its range)."""
for _low, _high in SORT_BUCKETS:
    TASKS[f"sort {_low}-{_high}"] = lambda rng, low=_low, high=_high: sort_task(rng, length=rng.randint(low, high))
MAIN_TASKS = ["sort", "reverse", "add: call", "add: answer"]


@dataclass
class Tally:
    """Results of one task under one setting."""

    runs: int = 0
    correct: int = 0
    valid_calls: int = 0
    expected_calls: int = 0
    thoughts: int = 0
    canvases: int = 0
    steps: int = 0
    tokens: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, task: DemoTask, generation: Generation) -> None:
        self.runs += 1
        self.correct += check(task, generation)
        if task.expected_call is not None:
            self.expected_calls += 1
            self.valid_calls += any(
                call.name == "add" and set(call.arguments) == {"a", "b"} for call in generation.tool_calls
            )
        self.thoughts += bool(generation.reasoning)
        self.canvases += generation.usage.canvases or 0
        self.steps += generation.usage.denoising_steps or 0
        self.tokens += generation.usage.completion_tokens
        if not check(task, generation) and len(self.failures) < 3:
            self.failures.append(f"{task.messages[0].text!r} -> {generation.text!r} {generation.tool_calls}")

    def record(self, label: str, task: str, steps: int | None, thinking: bool) -> dict[str, object]:
        """The row as data: setting, task, the cap on steps, and the measured rates."""
        return {
            "setting": label,
            "task": task,
            "max_denoising_steps": steps,
            "thinking": thinking,
            "prompts": self.runs,
            "exact_match": self.correct / self.runs,
            "steps_per_canvas": self.steps / max(self.canvases, 1),
            "tokens_per_forward": self.tokens / max(self.steps, 1),
        }

    def row(self, label: str, task: str, thinking: bool) -> str:
        calls = f"{self.valid_calls / self.expected_calls:.0%}" if self.expected_calls else "-"
        thought = f"{self.thoughts / self.runs:.0%}" if thinking else "-"
        steps = self.steps / max(self.canvases, 1)
        per_forward = self.tokens / max(self.steps, 1)
        return (
            f"| {label} | {task} | {self.runs} | {self.correct / self.runs:.1%} | {calls} | {thought} "
            f"| {steps:.1f} | {per_forward:.2f} |"
        )


async def evaluate(
    client: AsyncDiffusionGemma, task_name: str, prompts: int, thinking: bool, diffusion: DiffusionParams
) -> Tally:
    """Run `prompts` held-out prompts of one task (same prompts for every setting)."""
    rng = random.Random(f"{EVAL_SEED}-{task_name}")
    tally = Tally()
    for index in range(prompts):
        task = TASKS[task_name](rng)
        generation = await client.generate(
            task.messages,
            tools=task.tools or None,
            thinking=thinking,
            max_tokens=128,
            seed=index,
            diffusion=None if diffusion.is_empty() else diffusion,
        )
        tally.add(task, generation)
    return tally


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="torch:demo")
    parser.add_argument("--prompts", type=int, default=100, help="prompts per task at the default settings")
    parser.add_argument("--sweep", default="4,8,16", help="max_denoising_steps values to sweep (comma separated)")
    parser.add_argument("--sweep-prompts", type=int, default=40)
    parser.add_argument("--length-prompts", type=int, default=40, help="prompts per row of sort by list length")
    parser.add_argument("--tasks", default=",".join(MAIN_TASKS), help="tasks of the main rows (comma separated)")
    parser.add_argument("--show-failures", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="a DiffusionParams override for every row"
    )
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)

    settings = [("default", None, False, args.prompts), ("default, thinking", None, True, args.sweep_prompts)]
    settings += [(f"steps={s}", int(s), False, args.sweep_prompts) for s in args.sweep.split(",") if s]
    tasks = [task for task in args.tasks.split(",") if task]
    by_length = [f"sort {low}-{high}" for low, high in SORT_BUCKETS]
    columns = ["setting", "task", "prompts", "exact match", "valid tool calls", "thought written", "steps/canvas"]
    print("| " + " | ".join([*columns, "tokens/forward"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    records: list[dict[str, object]] = []
    async with AsyncDiffusionGemma(backend=args.backend) as client:
        rows = [(label, steps, thinking, prompts, tasks) for label, steps, thinking, prompts in settings]
        rows.append(("default, by length", None, False, args.length_prompts, by_length))
        for label, steps, thinking, prompts, names in rows:
            if not prompts:
                continue
            for task_name in names:
                diffusion = DiffusionParams.model_validate({**overrides, "max_denoising_steps": steps})
                tally = await evaluate(client, task_name, prompts, thinking, diffusion)
                print(tally.row(label, task_name, thinking), flush=True)
                records.append(tally.record(label, task_name, steps, thinking))
                if args.show_failures:
                    for failure in tally.failures:
                        print(f"    {failure}")
    if args.json is not None:
        command = "evals/demo_tasks.py " + " ".join(sys.argv[1:])
        args.json.write_text(json.dumps({"eval": "demo_tasks", "command": command, "rows": records}, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
