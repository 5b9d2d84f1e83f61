"""An OpenAI-compatible HTTP server over any backend: `diffusiongemma serve`, or `create_app` / `run_server`.

Needs the `server` extra (`pip install 'diffusiongemma-sdk[server]'`: Starlette and uvicorn). Importing this package
does not import them; `create_app` and `run_server` do, and raise `ConfigurationError` with the install line when they
are missing. The rest of the SDK never imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diffusiongemma_sdk._errors import ConfigurationError
from diffusiongemma_sdk.server._defaults import (
    DEFAULT_GRACEFUL_SHUTDOWN_S,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DENOISING_STEPS_LIMIT,
    DEFAULT_MAX_TOKENS_LIMIT,
    DEFAULT_PORT,
)
from diffusiongemma_sdk.server._run import INSTALL_HINT, run_server

if TYPE_CHECKING:
    from diffusiongemma_sdk.server._app import create_app

__all__ = [
    "DEFAULT_GRACEFUL_SHUTDOWN_S",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DENOISING_STEPS_LIMIT",
    "DEFAULT_MAX_TOKENS_LIMIT",
    "DEFAULT_PORT",
    "create_app",
    "run_server",
]


def __getattr__(name: str) -> Any:
    """`create_app` (see `server.app`), imported on first use because it needs the `server` extra."""
    if name != "create_app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from diffusiongemma_sdk.server._app import create_app
    except ImportError as exc:
        raise ConfigurationError(f"{INSTALL_HINT} ({exc}).") from None
    return create_app
