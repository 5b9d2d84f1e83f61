"""diffusiongemma-gguf: the `gguf:` backend of diffusiongemma-sdk, spec `gguf:<file.gguf>` or `gguf:demo`.

The file runs in llama.cpp (llama-cpp-python built with llama.cpp PR #24423: `diffusiongemma build-llama-cpp`), or,
with `backend_options={"engine": "torch"}`, dequantized into the torch engine (diffusiongemma-torch).
`diffusiongemma convert-gguf` writes a checkpoint in this layout.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffusiongemma_gguf._header import GGUFHeader
from diffusiongemma_gguf._options import GGUFOptions
from diffusiongemma_gguf._support import LlamaCppSupport, LlamaCppUnavailableError, llama_cpp_support
from diffusiongemma_sdk import Backend, BackendOptions, ConfigurationError
from diffusiongemma_sdk._local.backend import engine_options

__all__ = [
    "GGUFHeader",
    "GGUFOptions",
    "LlamaCppSupport",
    "LlamaCppUnavailableError",
    "create_backend",
    "llama_cpp_support",
]


def create_backend(target: str, options: BackendOptions) -> Backend:
    """Entry point of the `gguf:` scheme: read the file's header and load it now, so that problems show at once."""
    gguf_options = engine_options(GGUFOptions, options, "gguf")
    if not target:
        raise ConfigurationError("gguf: needs a file: gguf:<file.gguf> or gguf:demo.")
    name = f"gguf:{target}"
    if target == "demo":
        from diffusiongemma_gguf._demo import demo_gguf

        path = demo_gguf()
    else:
        path = Path(target).expanduser()
    header = GGUFHeader.read(path)
    if gguf_options.engine == "torch":
        return _on_torch(name, header, gguf_options)
    return _on_llama_cpp(name, header, gguf_options)


def _on_torch(name: str, header: GGUFHeader, options: GGUFOptions) -> Backend:
    try:
        from diffusiongemma_gguf._torch_engine import torch_backend
        from diffusiongemma_torch import TorchOptions
    except ImportError:
        raise ConfigurationError(
            "engine=torch runs the GGUF on the torch engine: pip install diffusiongemma-torch"
        ) from None
    torch_options = TorchOptions(
        device=options.device,
        dtype=options.dtype,
        stream_every=options.stream_every,
        default_max_tokens=options.default_max_tokens,
        max_batch=options.max_batch,
        prefix_cache_mb=options.prefix_cache_mb,
    )
    return torch_backend(name, header, torch_options)


def default_threads() -> int:
    """Half the logical cores (the physical ones on SMT machines), at least one: ggml's threads meet at a barrier
    after every operation, so a thread that has no core of its own stalls the others (on the 2-core dev VM, shared:
    a demo step took 19 ms on one thread and 69 ms on two)."""
    return max(1, (os.cpu_count() or 2) // 2)


def _on_llama_cpp(name: str, header: GGUFHeader, options: GGUFOptions) -> Backend:
    from diffusiongemma_gguf._backend import LlamaCppBackend
    from diffusiongemma_gguf._llama import LlamaCppModel

    model = LlamaCppModel(
        header.path,
        canvas_length=header.canvas_length,
        context=min(options.context or header.context_length, header.context_length),
        threads=options.threads or default_threads(),
        prefill_chunk=options.prefill_chunk,
    )
    return LlamaCppBackend(name, header, model, options)
