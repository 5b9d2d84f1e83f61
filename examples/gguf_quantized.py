"""A quantized GGUF of the demo model: convert it, then run it where llama.cpp can and where it cannot.

    python examples/gguf_quantized.py

Needs `pip install diffusiongemma-sdk diffusiongemma-torch diffusiongemma-gguf`. The file runs on llama.cpp when
llama-cpp-python was built with DiffusionGemma (`diffusiongemma build-llama-cpp <llama.cpp tree>`); everywhere else
`-o engine=torch` dequantizes it into the torch engine. The application code is the same for both.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from diffusiongemma_gguf import llama_cpp_support
from diffusiongemma_sdk import AsyncDiffusionGemma

PROMPT = "Reverse these words: red green blue"


async def answer(spec: str, options: dict[str, Any]) -> str:
    async with AsyncDiffusionGemma(spec, backend_options=options) as client:
        return (await client.generate(PROMPT, seed=0)).text


def convert(folder: Path) -> Path:
    """`diffusiongemma convert-gguf demo demo-q8_0.gguf --type q8_0`, as a user runs it."""
    quantized = folder / "demo-q8_0.gguf"
    program = Path(sys.executable).with_name("diffusiongemma")  # the command-line program of this environment
    subprocess.run([program, "convert-gguf", "demo", quantized, "--type", "q8_0"], check=True, capture_output=True)
    print(f"wrote {quantized.name}: {quantized.stat().st_size / 2**20:.1f} MiB")
    return quantized


async def main(quantized: Path) -> None:
    print(f"torch:demo (bf16 weights)      -> {await answer('torch:demo', {})}")
    print(f"gguf: Q8_0 on the torch engine -> {await answer(f'gguf:{quantized}', {'engine': 'torch'})}")
    support = llama_cpp_support()
    if support.ready:
        print(f"gguf: Q8_0 on llama.cpp        -> {await answer(f'gguf:{quantized}', {})}")
    else:
        print(f"llama.cpp: not here ({support.detail}); {support.remedy}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(main(convert(Path(scratch))))
