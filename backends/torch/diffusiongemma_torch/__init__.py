"""diffusiongemma-torch: the `torch:` backend of diffusiongemma-sdk. Its engine is not implemented in this release."""

from __future__ import annotations

from diffusiongemma_sdk import BackendOptions, ConfigurationError

__all__ = ["create_backend"]


def create_backend(target: str, options: BackendOptions) -> None:
    """Entry point of the `torch:` scheme (group `diffusiongemma_sdk.backends`)."""
    raise ConfigurationError(
        f"diffusiongemma-torch is installed but its engine has not been released yet, so 'torch:{target}' cannot run. "
        "Use a remote backend for now: 'nim' or 'openai:<base_url>'."
    )
