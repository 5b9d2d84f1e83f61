"""`gguf:` on llama.cpp, `gguf:` on the torch engine (`-o engine=torch`) and `torch:`, on the same models, one run.

    .venv/bin/python benchmarks/gguf_engines.py [--json docs/data/gguf_engines.json]   # demo and mid config, F32

Models: the demo model (`torch:demo`; `gguf:demo` is it converted to F32) and the mid-size config of
benchmarks/engine_vs_transformers.py (hidden 512, 4 layers with 1 full, vocab 32768, 16 experts top-4, canvas
256; random weights, the demo's tokenizer) converted to F32, so every engine computes on the same weights. Each
engine runs in its own process (peak RSS is its own), loads the model, answers one request to warm up, then
`--prompts` requests one after another: the demo model's tasks at its default settings; on the random mid model,
prompts of demo tasks with `max_tokens=512` (two canvases) and 8 denoising steps a canvas (a random network never
converges, so every canvas takes them all). Every engine runs `--rounds` times, the engines interleaved, and the
run with the median steps/s is shown. Prints steps/s, tokens/s (completion tokens over wall time), peak RSS (the
largest of the rounds) and the ratio of steps/s against `torch:`, the named peer, measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support, run as a script

from benchmarks._results import write_bars

ENGINES = {"gguf: llama.cpp": {}, "gguf: engine=torch": {"engine": "torch"}, "torch:": None}
MID_DIFFUSION = {"max_denoising_steps": 8}


async def child(spec: str, options: dict[str, Any], workload: str, prompts: int) -> dict[str, float]:
    from diffusiongemma_sdk import AsyncDiffusionGemma
    from diffusiongemma_torch.demo.tasks import sample_task

    rng = random.Random(7)
    tasks = [sample_task(rng, kind) for kind in ("sort", "reverse", "add") for _ in range(prompts)][:prompts]
    extra: dict[str, Any] = {"max_tokens": 128}
    if workload == "mid":
        extra = {"max_tokens": 512, "diffusion": MID_DIFFUSION}
    started = time.perf_counter()
    async with AsyncDiffusionGemma(spec, backend_options=options) as client:
        loaded = time.perf_counter() - started
        await client.generate(tasks[0].messages, tools=tasks[0].tools or None, seed=99, **extra)
        steps = tokens = 0
        started = time.perf_counter()
        for seed, task in enumerate(tasks):
            generation = await client.generate(task.messages, tools=task.tools or None, seed=seed, **extra)
            steps += generation.usage.denoising_steps or 0
            tokens += generation.usage.completion_tokens
        wall = time.perf_counter() - started
    return {"load_s": loaded, "wall_s": wall, "steps": steps, "tokens": tokens, "rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: its own, unlike getrusage's, which keeps the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median steps/s (its own numbers kept together), with the largest peak RSS of all runs."""
    ordered = sorted(runs, key=lambda run: run["steps"] / run["wall_s"])
    return {**ordered[len(ordered) // 2], "rss_mb": max(run["rss_mb"] for run in runs)}


def mid_checkpoint(folder: Path) -> Path:
    from benchmarks._models import MID_CONFIG
    from tests.support.tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(folder / "mid", dataclasses.replace(MID_CONFIG, tokenizer="demo"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=40, help="requests per engine on the demo model")
    parser.add_argument("--mid-prompts", type=int, default=2, help="requests per engine on the mid config")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every engine, interleaved; medians shown")
    parser.add_argument("--json", type=Path, help="also write the table to this file (docs/data/)")
    parser.add_argument("--child", nargs=4, metavar=("SPEC", "OPTIONS", "WORKLOAD", "PROMPTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec, options, workload, prompts = args.child
        print(json.dumps(asyncio.run(child(spec, json.loads(options), workload, int(prompts)))))
        return

    from diffusiongemma_gguf._convert import convert_checkpoint
    from diffusiongemma_gguf._demo import demo_gguf

    with tempfile.TemporaryDirectory() as scratch:
        mid = mid_checkpoint(Path(scratch))
        mid_gguf = convert_checkpoint(str(mid), Path(scratch) / "mid.gguf", out_type="f32")
        models = {
            "demo": (demo_gguf(), "torch:demo", args.prompts),
            "mid config": (mid_gguf, f"torch:{mid}", args.mid_prompts),
        }
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for model, (gguf_file, torch_spec, prompts) in models.items():
            for _ in range(args.rounds):  # interleaved, so that a busy spell of a shared machine hits every engine
                for engine, options in ENGINES.items():
                    spec = torch_spec if options is None else f"gguf:{gguf_file}"
                    workload = "demo" if model == "demo" else "mid"
                    command = [sys.executable, __file__, "--child", spec, json.dumps(options or {}), workload]
                    output = subprocess.run([*command, str(prompts)], capture_output=True, text=True, check=True)
                    runs.setdefault((model, engine), []).append(json.loads(output.stdout.strip().splitlines()[-1]))
    results = {key: median_run(values) for key, values in runs.items()}
    print(f"{'model':12}{'engine':22}{'load s':>8}{'steps/s':>10}{'tokens/s':>10}{'peak RSS MB':>13}{'vs torch:':>11}")
    rows = []
    for (model, engine), r in results.items():
        steps_per_s = r["steps"] / r["wall_s"]
        peer = results[(model, "torch:")]
        ratio = steps_per_s / (peer["steps"] / peer["wall_s"])
        print(
            f"{model:12}{engine:22}{r['load_s']:8.2f}{steps_per_s:10.1f}{r['tokens'] / r['wall_s']:10.1f}"
            f"{r['rss_mb']:13.0f}{ratio:10.2f}x"
        )
        rows.append(
            {
                "engine": f"{model}, {engine}",
                "steps_per_s": steps_per_s,
                "tokens_per_s": r["tokens"] / r["wall_s"],
                "peak_rss_mb": r["rss_mb"],
                "ratio": ratio,
            }
        )
    write_bars(
        args.json,
        title="gguf: on llama.cpp and on the torch engine against torch:, same weights (F32)",
        rows=rows,
        label="engine",
        value="steps_per_s",
        value_label="denoising steps/s (ratio: against torch: on the same model)",
    )


if __name__ == "__main__":
    main()
