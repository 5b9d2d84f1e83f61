"""One denoising step of the torch engine against its roofline, eager and compiled, on a GPU (or the CPU).

    .venv/bin/python benchmarks/step_roofline.py --device cuda --dtype bfloat16     # a lent GPU (about 3 minutes)
    .venv/bin/python benchmarks/step_roofline.py                                    # CPU fp32: does compile pay?

Builds random weights of a config (`--config real-slice`: two of the real model's 30 layers, one sliding and one full,
with its shapes: hidden 2816, 16 query heads, 8 key heads of 256 on the sliding layer and 2 of 512 on the full one,
128 experts of 704 top 8, dense MLP 2112, vocab 262,144; `mid`: hidden 512, vocab 32,768), fills `--rows` rows of
`--context` tokens into the continuous-batching pool and times its denoising steps (the forward pass, then each
row's sampling). The roofline of a step is the larger of its FLOPs over
the device's peak and its bytes over the device's bandwidth (weights read once, the KV cache and the canvas's
vocabulary-sized tensors); the table says how far the step is from it. `--compile` adds `torch.compile` of the network
(mode "max-autotune-no-cudagraphs" on CUDA, default on CPU) and, on CUDA, CUDA graphs ("reduce-overhead").
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
from diffusiongemma_torch._config import TextConfig
from diffusiongemma_torch._pool import RowPool
from tests.support.tiny_checkpoint import TinySpec, build_tiny_checkpoint

PEAKS = {  # dense bf16 tensor FLOP/s and memory bandwidth in bytes/s, from the vendors' data sheets
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "A100": (312e12, 2.0e12),
}
CONFIGS = {
    "mid": dataclasses.replace(MID_CONFIG, context=131072),
    "real-slice": TinySpec(
        vocab=262144, hidden=2816, layers=("sliding_attention", "full_attention"), sliding_window=1024, canvas=256,
        experts=128, top_k=8, heads=16, kv_heads=8, head_dim=256, global_head_dim=512, global_kv_heads=2,
        context=262144, intermediate=2112, moe_intermediate=704,
    ),
}  # fmt: skip


def step_cost(config: TextConfig, rows: int, context: int, bytes_per: int) -> tuple[float, float]:
    """FLOPs and bytes of one denoising step of `rows` canvases after `context` tokens each."""
    c, h, v = config.canvas_length, config.hidden_size, config.vocab_size
    tokens = rows * c
    flops = 0.0
    weights = 0.0
    for sliding, head_dim, kv in zip(config.sliding, config.head_dims, config.kv_heads, strict=True):
        q = config.num_heads * head_dim
        projections = h * (2 * q + (1 if not sliding else 2) * kv * head_dim)
        dense = 3 * h * config.intermediate_size
        experts = config.num_experts * 3 * h * config.moe_intermediate_size
        active = config.top_k_experts * 3 * h * config.moe_intermediate_size
        flops += 2 * tokens * (projections + dense + active)
        keys = min(context, config.sliding_window - 1) if sliding else context
        flops += 4 * tokens * (keys + c) * q  # scores and the weighted sum
        weights += projections + dense + experts + config.num_experts * h
    flops += 2 * tokens * h * v  # logits
    cache = sum(
        2 * kv * dim * (min(context, config.sliding_window - 1) if sliding else context)
        for sliding, dim, kv in zip(config.sliding, config.head_dims, config.kv_heads, strict=True)
    )
    byte_count = (weights + v * h) * bytes_per + rows * cache * bytes_per + rows * c * v * 4 * 4
    return flops, byte_count


def run(args: argparse.Namespace, directory: Path, compile_mode: str | None) -> list[float]:
    loaded = load_checkpoint(str(directory), device=args.device, dtype=args.dtype)
    net = loaded.net
    if compile_mode is not None:
        net._layers = torch.compile(net._layers, mode=compile_mode, dynamic=True)  # type: ignore[method-assign]
    settings = SamplerSettings(
        max_denoising_steps=10_000, entropy_bound=0.1, t_min=0.4, t_max=0.8, confidence_threshold=1e-12,
        stability_threshold=1,
    )  # fmt: skip
    pool = RowPool(net, stop_token_ids=(1,), pad_token_id=0)
    generator = torch.Generator(device=args.device)
    for row in range(args.rows):
        prompt = torch.randint(3, net.config.vocab_size, (args.context,), generator=generator.manual_seed(row))
        pool.admit(prompt.tolist(), settings, torch.Generator(device=args.device).manual_seed(row), 1)
    for _ in range(args.warmup):
        pool.step()
    times = []
    for _ in range(args.steps):
        synchronize(args.device)
        started = time.perf_counter()
        pool.step()
        synchronize(args.device)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--config", default="mid", choices=sorted(CONFIGS))
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gpu", default="H100", choices=sorted(PEAKS), help="whose peaks the roofline uses")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (and CUDA graphs on CUDA)")
    parser.add_argument("--json", type=Path, help="also write the table to this file (docs/data/)")
    args = parser.parse_args()

    spec = CONFIGS[args.config]
    modes: list[tuple[str, str | None]] = [("eager", None)]
    if args.compile:
        if args.device.startswith("cuda"):
            modes += [("torch.compile", "max-autotune-no-cudagraphs"), ("compile + CUDA graphs", "reduce-overhead")]
        else:
            modes += [("torch.compile", "default")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        build_tiny_checkpoint(Path(folder), spec)
        config = load_checkpoint(folder, device="cpu").config
        bytes_per = 2 if args.dtype == "bfloat16" else 4
        flops, byte_count = step_cost(config, args.rows, args.context, bytes_per)
        peak_flops, bandwidth = PEAKS[args.gpu]
        if not args.device.startswith("cuda"):
            peak_flops, bandwidth = 1e11, 2e10  # a two-core CPU, roughly: the ratio then says little
        roofline = max(flops / peak_flops, byte_count / bandwidth)
        print(
            f"{args.config}: {len(spec.layers)} layers, hidden {config.hidden_size}, vocab {config.vocab_size}; "
            f"{args.rows} rows x canvas {config.canvas_length} after {args.context} tokens; {args.device} {args.dtype}"
        )
        print(f"a step: {flops / 1e12:.3f} TFLOP, {byte_count / 1e9:.3f} GB; roofline {roofline * 1e3:.2f} ms")
        print(f"{'mode':<24}{'median ms':>11}{'min ms':>9}{'x roofline':>12}{'tokens/s':>11}")
        for name, mode in modes:
            try:
                times = run(args, Path(folder), mode)
            except Exception as exc:  # a compiler that cannot take the network is a result too
                lines = [line for line in str(exc).splitlines() if line.strip() and "TORCHDYNAMO" not in line]
                reason = (lines[0] if lines else "")[:100]
                print(f"{name:<24}failed: {type(exc).__name__}: {reason}")
                continue
            median = statistics.median(times)
            tokens = args.rows * config.canvas_length / median
            rows.append({"mode": name, "median_ms": median * 1e3, "ratio": median / roofline})
            print(f"{name:<24}{median * 1e3:>11.2f}{min(times) * 1e3:>9.2f}{median / roofline:>11.2f}x{tokens:>11.0f}")
    write_bars(
        args.json,
        title=f"A denoising step against its roofline ({args.config}, {args.rows} rows, {args.device} {args.dtype})",
        rows=rows,
        label="mode",
        value="median_ms",
        value_label="ms per step (annotation: times the roofline)",
    )


if __name__ == "__main__":
    main()
