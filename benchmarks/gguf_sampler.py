"""The llama.cpp engine's sampler at the real vocabulary, against the forward pass it follows, on this machine.

    .venv/bin/python benchmarks/gguf_sampler.py                 # 256 x 262,144 logits a step

One denoising step's sampling (temperature, softmax, entropy, entropy-bound acceptance, the accepted positions'
draws, renoising, the stop rule) on a [256, 262144] fp32 canvas of logits, with numpy (chunked, for installs
without torch) and with torch (the torch engine's own sampler pieces), against one denoising forward pass of
llama.cpp (PR #24423) on the smallest real-vocabulary network this repository builds: the mid-size config of
benchmarks/engine_vs_transformers.py (hidden 512, 4 layers, 16 experts top-4, canvas 256) with a 262,144-token
vocabulary, F16, self-conditioning on. A real model's step costs far more (26B-A4B: about 2.3 TFLOP), so this
ratio is the sampler's worst case. Two kinds of step: uncertain logits (the entropy bound accepts one position) and
confident ones (every position accepted, each sampled). Prints the median of `--steps` steps of each (the torch
sampler's confident step, which is slow, once) and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support, run as a script

from benchmarks._models import MID_CONFIG
from diffusiongemma_gguf import GGUFHeader, default_threads
from diffusiongemma_gguf._convert import convert_checkpoint
from diffusiongemma_gguf._llama import LlamaCppModel
from diffusiongemma_gguf._numpy_sampler import NumpyStepSampler
from diffusiongemma_gguf._torch_sampler import TorchStepSampler
from diffusiongemma_sdk._local.settings import SamplerSettings
from tests.support.tiny_checkpoint import build_tiny_checkpoint

SETTINGS = SamplerSettings(
    max_denoising_steps=48, entropy_bound=0.1, t_min=0.4, t_max=0.8, confidence_threshold=0.005, stability_threshold=1
)


def median_seconds(run: Callable[[int], object], steps: int) -> float:
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        run(step)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])  # the first warms caches up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=262_144)
    parser.add_argument("--canvas", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    uncertain = (np.tanh(rng.normal(0, 0.1, (args.canvas, args.vocab))) * 30).astype(np.float32)  # softcapped
    confident = uncertain.copy()
    confident[np.arange(args.canvas), rng.integers(0, args.vocab, args.canvas)] = 30.0
    rows = []
    for name, make in (("numpy (chunked)", NumpyStepSampler), ("torch", TorchStepSampler)):
        for kind, logits in (("1 position accepted", uncertain), ("all 256 accepted", confident)):
            sampler = make(SETTINGS, length=args.canvas, vocab=args.vocab, seed=0)
            sampler.start_canvas()
            steps = args.steps if kind.startswith("1") or name.startswith("numpy") else 1
            seconds = median_seconds(lambda step, s=sampler, x=logits: s.step(x, 48 - step), steps)
            rows.append((f"sampling, {name}, {kind}", seconds))
            sampler.close()
    with tempfile.TemporaryDirectory() as scratch:
        spec = dataclasses.replace(MID_CONFIG, vocab=args.vocab, canvas=args.canvas, tokenizer="demo")
        checkpoint = build_tiny_checkpoint(Path(scratch) / "mid", spec)
        path = convert_checkpoint(str(checkpoint), Path(scratch) / "mid.gguf", out_type="f16")
        header = GGUFHeader.read(path)
        model = LlamaCppModel(
            path, canvas_length=args.canvas, context=4096, threads=default_threads(), prefill_chunk=512
        )
        prompt = list(range(2, 66))
        model.prefill(prompt, 0, len(prompt) + args.canvas)
        canvas = rng.integers(0, args.vocab, args.canvas)
        previous = model.denoise(canvas, len(prompt), None, 0.8)
        rows.append(
            (
                f"llama.cpp forward, mid config, vocab {len(header.vocab.tokens):,}",
                median_seconds(lambda step: model.denoise(canvas, len(prompt), previous, 0.8), args.steps),
            )
        )
        model.close()
    forward = rows[-1][1]
    print(f"one denoising step at {args.canvas} x {args.vocab:,}, median of {args.steps} (seconds)")
    print(f"{'':52}{'s/step':>9}{'x forward':>11}")
    for name, seconds in rows:
        print(f"{name:52}{seconds:9.3f}{seconds / forward:10.2f}x")


if __name__ == "__main__":
    main()
