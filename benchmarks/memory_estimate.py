"""The torch engine's memory estimates against the memory it really takes, at the real vocabulary (262,144).

    .venv/bin/python benchmarks/memory_estimate.py [--json docs/data/memory_estimate.json]

Builds a checkpoint with the real model's vocabulary and canvas (256) and a small body, then for one request and for
a batch of 8 requests of the continuous-batching pool, each of `--context` tokens, measures the peak resident memory
the generation adds to the loaded model (Linux's VmHWM, reset through /proc/self/clear_refs before each run) and
prints it beside what `_admission` estimates for it (`pool_bytes`). CPU, fp32.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._results import write_bars
from diffusiongemma_sdk._local.settings import SamplerSettings
from diffusiongemma_torch._admission import pool_bytes
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch._pool import RowPool
from tests.support.tiny_checkpoint import TinySpec, build_tiny_checkpoint

SPEC = TinySpec(
    vocab=262144, hidden=256, layers=("sliding_attention", "full_attention"), sliding_window=1024, canvas=256,
    experts=4, top_k=2, heads=4, kv_heads=2, head_dim=64, global_head_dim=128, global_kv_heads=1, context=65536,
)  # fmt: skip


def resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(net: Any, rows: int, context: int, canvases: int) -> int:
    """Peak bytes a generation of `rows` requests adds to what the process holds before it."""
    settings = SamplerSettings(
        max_denoising_steps=2, entropy_bound=0.1, t_min=0.4, t_max=0.8, confidence_threshold=1e-12,
        stability_threshold=1,
    )  # fmt: skip
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what earlier runs freed goes back to the system, out of `before`
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from what is resident now
    before = resident_kib("VmRSS")
    pool = RowPool(net, stop_token_ids=(1,), pad_token_id=0)
    for row in range(rows):
        prompt = torch.randint(3, net.config.vocab_size, (context,), generator=torch.Generator().manual_seed(row))
        pool.admit(prompt.tolist(), settings, torch.Generator().manual_seed(row), canvases)
    while pool.rows:
        pool.step()
    return (resident_kib("VmHWM") - before) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=4096, help="prompt tokens of each request")
    parser.add_argument("--canvases", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the table to this file (docs/data/)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as folder:
        build_tiny_checkpoint(Path(folder), SPEC)
        net = load_checkpoint(folder, device="cpu").net
    tokens = args.context + args.canvases * net.config.canvas_length
    measure(net, 1, 300, 1)  # warm-up: the allocator's and the threads' first costs are not the request's
    print(f"vocab {net.config.vocab_size}, canvas {net.config.canvas_length}, hidden {net.config.hidden_size}; "
          f"requests of {args.context} prompt tokens and {args.canvases} canvases; CPU fp32")  # fmt: skip
    print(f"{'requests':>8}  {'measured MiB':>12}  {'estimated MiB':>13}  {'estimate / measured':>19}")
    rows: list[dict[str, Any]] = []
    for count in (1, 8):
        measured = measure(net, count, args.context, args.canvases)
        estimated = pool_bytes(net.config, [tokens] * count, net.dtype)
        ratio = estimated / measured
        rows.append({"requests": f"{count} request(s)", "measured_mib": measured / 2**20, "ratio": ratio})
        print(f"{count:>8}  {measured / 2**20:>12.0f}  {estimated / 2**20:>13.0f}  {ratio:>18.2f}x")
    write_bars(
        args.json,
        title="Memory of a generation at the real vocabulary: measured peak (annotation: estimate / measured)",
        rows=rows,
        label="requests",
        value="measured_mib",
        value_label="MiB added to the loaded model",
    )


if __name__ == "__main__":
    main()
