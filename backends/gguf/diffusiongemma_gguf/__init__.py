"""diffusiongemma-gguf: the `gguf:` backend of diffusiongemma-sdk. Its engine is not implemented in this release."""

from __future__ import annotations

from diffusiongemma_sdk import BackendOptions, ConfigurationError

__all__ = ["create_backend"]


def create_backend(target: str, options: BackendOptions) -> None:
    """Entry point of the `gguf:` scheme (group `diffusiongemma_sdk.backends`)."""
    raise ConfigurationError(
        f"diffusiongemma-gguf is installed but its engine has not been released yet, so 'gguf:{target}' cannot run. "
        "Use a remote backend for now: 'nim' or 'openai:<base_url>'."
    )
