"""Backend spec strings (`nim`, `openai:<url>#<model>`, `torch:<dir>`, `gguf:<file>`) and their resolution."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from diffusiongemma_sdk._backend import Backend, BackendOptions
from diffusiongemma_sdk._errors import BackendNotInstalledError, ConfigurationError

__all__ = ["DISTRIBUTIONS", "ENTRY_POINT_GROUP", "BackendFactory", "BackendSpec", "create_backend", "default_spec"]

ENTRY_POINT_GROUP = "diffusiongemma_sdk.backends"
BACKEND_ENV = "DIFFUSIONGEMMA_BACKEND"
NVIDIA_KEY_ENV = "NVIDIA_API_KEY"

BackendFactory = Callable[[str, BackendOptions], Backend]
"""What a `diffusiongemma_sdk.backends` entry point loads: `(target, options) -> Backend`."""

# Schemes whose distribution we publish, for the install hint when one is missing.
DISTRIBUTIONS = {"torch": "diffusiongemma-torch", "gguf": "diffusiongemma-gguf"}

_CHOICES = (
    "  nim                       hosted NVIDIA NIM (needs NVIDIA_API_KEY)\n"
    "  nim:<model>               hosted NIM, another model id\n"
    "  openai:<base_url>[#model] any OpenAI-compatible server (vLLM, self-hosted NIM, `diffusiongemma serve`)\n"
    "  torch:<dir|hf-id|demo>    local PyTorch engine (pip install diffusiongemma-torch)\n"
    "  gguf:<file>               local GGUF build (pip install diffusiongemma-gguf)\n"
    "  test[:<answer>]           a scripted backend for tests (diffusiongemma_sdk.testing)"
)


@dataclass(frozen=True)
class BackendSpec:
    """A parsed spec string: `scheme` before the first ':', `target` after it (may be empty)."""

    scheme: str
    target: str

    @classmethod
    def parse(cls, spec: str) -> BackendSpec:
        """Split a spec string, checking only its shape; the backend checks the target."""
        scheme, _, target = spec.strip().partition(":")
        if not scheme or not scheme.replace("_", "").replace("-", "").isalnum():
            raise ConfigurationError(
                f"Backend spec {spec!r} is not of the form 'scheme[:target]'. Choose one of:\n{_CHOICES}"
            )
        return cls(scheme=scheme.lower(), target=target.strip())

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}" if self.target else self.scheme


def default_spec() -> str:
    """The spec used when none is given: `DIFFUSIONGEMMA_BACKEND`, else `nim` if `NVIDIA_API_KEY` is set."""
    configured = os.environ.get(BACKEND_ENV, "").strip()
    if configured:
        return configured
    if os.environ.get(NVIDIA_KEY_ENV):
        return "nim"
    raise ConfigurationError(
        f"No backend chosen. Pass one to AsyncDiffusionGemma(...), set {BACKEND_ENV}, or set {NVIDIA_KEY_ENV} "
        f"to use the hosted NIM API. Choices:\n{_CHOICES}"
    )


def create_backend(spec: str | None, options: BackendOptions) -> Backend:
    """Build the backend a spec string names (the default spec when None)."""
    parsed = BackendSpec.parse(spec if spec is not None else default_spec())
    return _factory(parsed.scheme)(parsed.target, options)


def _factory(scheme: str) -> BackendFactory:
    from diffusiongemma_sdk._remote import create_nim_backend, create_openai_backend
    from diffusiongemma_sdk.testing import create_test_backend

    builtin: dict[str, BackendFactory] = {
        "nim": create_nim_backend,
        "openai": create_openai_backend,
        "test": create_test_backend,
    }
    if scheme in builtin:
        return builtin[scheme]
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == scheme:
            factory: BackendFactory = entry_point.load()
            return factory
    if scheme in DISTRIBUTIONS:
        raise BackendNotInstalledError(scheme, DISTRIBUTIONS[scheme])
    raise ConfigurationError(f"Unknown backend scheme {scheme!r}. Choose one of:\n{_CHOICES}")
