"""Whether the installed llama-cpp-python can run DiffusionGemma, and the typed error (and `doctor` line) when it
cannot: what is missing and the command that fixes it.

llama-cpp-python exposes no architecture list. Builds with llama.cpp PR #24423 carry its `llama_diffusion_*`
functions (stock builds up to 0.3.36 have neither them nor the `diffusion-gemma` architecture), so their presence in
the loaded library is the test. Nothing here loads a model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from diffusiongemma_sdk import ConfigurationError

__all__ = [
    "BUILD_COMMAND",
    "PR_FUNCTIONS",
    "LlamaCppSupport",
    "LlamaCppUnavailableError",
    "library_of",
    "llama_cpp_support",
]

PR_FUNCTIONS = (
    "llama_diffusion_set_sc",
    "llama_diffusion_set_device_sc",
    "llama_diffusion_set_phase",
    "llama_diffusion_device_sample",
    "llama_diffusion_pkv_bytes_per_token",
)
BUILD_COMMAND = "diffusiongemma build-llama-cpp <llama.cpp checkout or tarball with PR #24423>"
TORCH_ENGINE = "or run the GGUF on the torch engine instead: -o engine=torch (pip install diffusiongemma-torch)"


@dataclass(frozen=True)
class LlamaCppSupport:
    """What the probe found: `ready`, what is installed or missing, the command that fixes it, and whether the
    answer is `known` (False when the library could not be inspected)."""

    ready: bool
    detail: str
    fix: str | None = None
    known: bool = True

    @property
    def remedy(self) -> str:
        """What to do: the fix, or the torch engine instead (what the typed error and `doctor` both say)."""
        return f"{self.fix}; {TORCH_ENGINE}"


class LlamaCppUnavailableError(ConfigurationError):
    """`gguf:` on the llama.cpp engine, where the installed llama-cpp-python cannot run DiffusionGemma."""

    def __init__(self, support: LlamaCppSupport) -> None:
        self.support = support
        super().__init__(
            f"The gguf: backend's llama.cpp engine needs llama-cpp-python built with llama.cpp PR #24423 "
            f"(DiffusionGemma): {support.detail}. Fix: {support.remedy}."
        )


def llama_cpp_support() -> LlamaCppSupport:
    """Probe the installed llama-cpp-python (imported by name, so that type checks do not follow into it)."""
    try:
        llama_cpp = importlib.import_module("llama_cpp")
    except ImportError:
        return LlamaCppSupport(False, "llama-cpp-python is not installed", BUILD_COMMAND)
    except Exception as error:  # installed, but its shared library does not load
        return LlamaCppSupport(
            False, f"llama-cpp-python is installed but fails to load: {error}", BUILD_COMMAND, known=False
        )
    package = f"llama-cpp-python {getattr(llama_cpp, '__version__', '(version unknown)')}"
    library = library_of(llama_cpp)
    if library is None:
        return LlamaCppSupport(
            False, f"{package}: cannot tell whether its llama.cpp has DiffusionGemma", BUILD_COMMAND, known=False
        )
    missing = [name for name in PR_FUNCTIONS if not hasattr(library, name)]
    if missing:
        return LlamaCppSupport(
            False,
            f"{package}: its llama.cpp lacks DiffusionGemma (no {', '.join(missing[:2])}...; stock llama.cpp has no "
            "'diffusion-gemma' architecture)",
            BUILD_COMMAND,
        )
    return LlamaCppSupport(True, f"{package}, built with DiffusionGemma (llama_diffusion_*)")


def library_of(llama_cpp: Any) -> Any:
    """The ctypes library llama-cpp-python loaded, or None."""
    return getattr(getattr(llama_cpp, "llama_cpp", None), "_lib", None)
