"""`backend_options` of the gguf backend: which engine runs the file, and each engine's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_MAX_TOKENS", "GGUFOptions"]

DEFAULT_MAX_TOKENS = 2048
_LLAMA_ONLY = ("threads", "context", "prefill_chunk", "sampling")
_TORCH_ONLY = ("device", "dtype", "max_batch", "prefix_cache_mb")


class GGUFOptions(BaseModel):
    """`backend_options` of `gguf:`. `engine="llama.cpp"` (the default) needs llama-cpp-python built with llama.cpp
    PR #24423; `engine="torch"` dequantizes the file's tensors into the torch engine (diffusiongemma-torch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["llama.cpp", "torch"] = Field(default="llama.cpp", description="What runs the file.")
    stream_every: int = Field(default=1, ge=1, description="Emit a denoise_step event every k steps.")
    default_max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, description="When a request sets none.")
    threads: int | None = Field(default=None, ge=1, description="llama.cpp: CPU threads; default: half the cores.")
    context: int | None = Field(default=None, ge=1, description="llama.cpp: context tokens; default: the model's.")
    prefill_chunk: int = Field(default=512, ge=1, description="llama.cpp: prompt tokens encoded per pass.")
    sampling: Literal["numpy", "torch"] = Field(
        default="numpy",
        description="llama.cpp: the sampler's arithmetic: numpy's (fast at any vocabulary), or torch's (the torch "
        "engine's own pieces and random streams, so a seed gives torch:'s tokens; needs diffusiongemma-torch, and "
        "its per-position draws grow with the vocabulary).",
    )
    device: str | None = Field(default=None, description="torch: 'cuda', 'cpu', ...; default: CUDA when present.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(default=None, description="torch: weights dtype.")
    max_batch: int = Field(default=1, ge=1, description="torch: requests denoised together.")
    prefix_cache_mb: int = Field(default=512, ge=0, description="torch: memory for encoded prompts reused; 0: off.")

    @model_validator(mode="after")
    def _options_fit_the_engine(self) -> GGUFOptions:
        foreign = _TORCH_ONLY if self.engine == "llama.cpp" else _LLAMA_ONLY
        named = [name for name in foreign if name in self.model_fields_set]
        if named:
            other = "torch" if self.engine == "llama.cpp" else "llama.cpp"
            raise ValueError(f"{', '.join(named)} apply to engine={other}, not engine={self.engine}")
        return self
