"""diffusiongemma-torch's engine vs transformers' `generate()` on the same random weights and settings.

Both run the reference sampler from the same seed and must produce identical tokens (asserted). Prints wall time per
canvas, denoising steps/s and tokens/s for each, and the ratio, measured in this one run. With `--batch N`, N prompts
go through both at once; the engine also runs them as the torch backend serves requests: the continuous-batching pool,
each row with its own generator and cache.

    .venv/bin/python benchmarks/engine_vs_transformers.py                   # CPU fp32, mid-size config
    .venv/bin/python benchmarks/engine_vs_transformers.py --batch 8
    .venv/bin/python benchmarks/engine_vs_transformers.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._models import MID_CONFIG, synchronize
from benchmarks._results import write_bars
from diffusiongemma_sdk._local.settings import SamplerSettings
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch._engine import CanvasCommitted, generate_canvases
from diffusiongemma_torch._pool import RowPool
from tests.support.tiny_checkpoint import build_tiny_checkpoint


def build(directory: Path, args: argparse.Namespace) -> None:
    spec = dataclasses.replace(
        MID_CONFIG, vocab=args.vocab, hidden=args.hidden, canvas=args.canvas, experts=args.experts, top_k=args.top_k
    )
    build_tiny_checkpoint(directory, spec)


def run_transformers(directory: Path, prompt: torch.Tensor, args: argparse.Namespace) -> tuple[torch.Tensor, float]:
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(directory, dtype=getattr(torch, args.dtype))
    model = model.to(args.device).eval()
    kwargs = {
        "max_new_tokens": args.canvases * args.canvas, "max_denoising_steps": args.steps,
        "sampler_config": EntropyBoundSamplerConfig(entropy_bound=0.1), "t_min": 0.4, "t_max": 0.8,
        "stability_threshold": 1, "confidence_threshold": 0.005, "eos_token_id": [1], "pad_token_id": 0,
    }  # fmt: skip
    with torch.inference_mode():
        torch.manual_seed(123)
        model.generate(prompt, **{**kwargs, "max_new_tokens": args.canvas, "max_denoising_steps": 1})  # warm-up
        synchronize(args.device)
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        tokens = model.generate(prompt, **kwargs).sequences
        synchronize(args.device)
    return tokens, time.perf_counter() - started


def run_engine(
    directory: Path, prompt: torch.Tensor, args: argparse.Namespace, *, reference: bool = True, pool: bool = False
) -> tuple[torch.Tensor, float]:
    net = load_checkpoint(str(directory), device=args.device, dtype=args.dtype).net
    settings = SamplerSettings(
        max_denoising_steps=args.steps, entropy_bound=0.1, t_min=0.4, t_max=0.8, confidence_threshold=0.005,
        stability_threshold=1, reference=reference,
    )  # fmt: skip

    def generate(seed: int, canvases: int, steps_settings: SamplerSettings) -> torch.Tensor:
        if pool:
            return _through_pool(net, prompt, steps_settings, seed, canvases, args.device)
        generator = torch.Generator(device=args.device).manual_seed(seed)
        out = [prompt]
        for report in generate_canvases(
            net, prompt, steps_settings, max_canvases=canvases, stop_token_ids=(1,), pad_token_id=0,
            generator=generator,
        ):  # fmt: skip
            if isinstance(report, CanvasCommitted):
                out.append(report.tokens)
        return torch.cat(out, dim=1)

    warm = SamplerSettings(**{**settings.__dict__, "max_denoising_steps": 1})
    generate(123, 1, warm)
    synchronize(args.device)
    started = time.perf_counter()
    tokens = generate(args.seed, args.canvases, settings)
    synchronize(args.device)
    return tokens, time.perf_counter() - started


def _through_pool(
    net: Any, prompt: torch.Tensor, settings: SamplerSettings, seed: int, canvases: int, device: str
) -> torch.Tensor:
    """The prompts as rows of the continuous-batching pool (how the torch backend serves them)."""
    pool = RowPool(net, stop_token_ids=(1,), pad_token_id=0)
    rows = [
        pool.admit(p.tolist(), settings, torch.Generator(device=device).manual_seed(seed + i), canvases)
        for i, p in enumerate(prompt)
    ]
    out: dict[Any, list[torch.Tensor]] = {row: [prompt[i : i + 1]] for i, row in enumerate(rows)}
    while pool.rows:
        for row, reports in pool.step().items():
            out[row] += [r.tokens for r in reports if isinstance(r, CanvasCommitted)]
    width = max(sum(t.shape[1] for t in parts) for parts in out.values())
    rows_tokens = [torch.cat(parts, dim=1) for parts in out.values()]
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in rows_tokens])


IMPLEMENTATIONS = (
    "transformers generate()",
    "diffusiongemma-torch, sampler=reference",
    "diffusiongemma-torch, sampler=default",
    "diffusiongemma-torch, continuous batching",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--canvas", type=int, default=256)
    parser.add_argument("--canvases", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per canvas (random weights use all)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1, help="prompts generated together")
    parser.add_argument("--runs", type=int, default=5, help="runs of every implementation, interleaved; medians")
    parser.add_argument("--json", type=Path, help="also write the table to this file (docs/data/ for the site)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        build(directory, args)
        shape = (args.batch, args.prompt_tokens)
        prompt = torch.randint(3, args.vocab, shape, generator=torch.Generator().manual_seed(1))
        prompt = prompt.to(args.device)
        times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
        for _ in range(args.runs):  # interleaved, so that a busy spell of the machine hits every implementation
            theirs, their_time = run_transformers(directory, prompt, args)
            ours, our_time = run_engine(directory, prompt, args)
            assert torch.equal(theirs, ours), "the engine's tokens differ from transformers' generate()"
            _, default_time = run_engine(directory, prompt, args, reference=False)
            _, pool_time = run_engine(directory, prompt, args, reference=False, pool=True)
            for name, seconds in zip(IMPLEMENTATIONS, (their_time, our_time, default_time, pool_time), strict=True):
                times[name].append(seconds)

    steps = args.canvases * args.steps
    tokens = args.batch * args.canvases * args.canvas
    print(
        f"config: batch {args.batch}, hidden {args.hidden}, 4 layers (1 full), vocab {args.vocab}, "
        f"{args.experts} experts top-{args.top_k}, canvas {args.canvas}, "
        f"{args.canvases} canvases x {args.steps} steps, {args.device} {args.dtype}, "
        f"torch {torch.__version__}; reference outputs identical; median of {args.runs} runs"
    )
    print(f"{'implementation':<44}{'s/canvas':>10}{'steps/s':>10}{'tokens/s':>10}{'ratio':>8}  ratio per run")
    baseline = times[IMPLEMENTATIONS[0]]
    rows = []
    for name, runs in times.items():
        seconds = statistics.median(runs)
        ratios = [theirs / ours for theirs, ours in zip(baseline, runs, strict=True)]
        ratio = statistics.median(ratios)
        print(
            f"{name:<44}{seconds / args.canvases:>10.3f}{steps / seconds:>10.2f}{tokens / seconds:>10.1f}"
            f"{ratio:>7.2f}x  {' '.join(f'{r:.2f}' for r in ratios)}"
        )
        rows.append({"implementation": name, "tokens_per_s": tokens / seconds, "ratio": ratio})
    write_bars(
        args.json,
        title=f"Torch engine vs transformers' generate(): batch {args.batch}, {args.device} {args.dtype}",
        rows=rows,
        label="implementation",
        value="tokens_per_s",
        value_label=f"tokens/s (median of {args.runs} runs; ratio: median of the runs' ratios)",
    )
    print(
        "(reference: tokens identical to transformers; default: the same distribution, other random draws; "
        "continuous batching: as the torch backend serves requests, a generator and a cache per row)"
    )


if __name__ == "__main__":
    main()
