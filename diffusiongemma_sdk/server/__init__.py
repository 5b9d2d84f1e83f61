"""An OpenAI-compatible HTTP server over any backend: `diffusiongemma serve`, or `create_app` / `run_server`.

Needs the `server` extra (`pip install 'diffusiongemma-sdk[server]'`: Starlette and uvicorn). Importing this package
does not import them; `create_app` and `run_server` do, and raise `ConfigurationError` with the install line when they
are missing. The rest of the SDK never imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffusiongemma_sdk.errors import ConfigurationError
from diffusiongemma_sdk.server.defaults import (
    DEFAULT_GRACEFUL_SHUTDOWN_S,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DENOISING_STEPS_LIMIT,
    DEFAULT_MAX_TOKENS_LIMIT,
    DEFAULT_PORT,
)
from diffusiongemma_sdk.server.run import INSTALL_HINT, run_server

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from diffusiongemma_sdk.client import AsyncDiffusionGemma

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


def create_app(
    client: AsyncDiffusionGemma,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    model_id: str | None = None,
    owns_client: bool = False,
    max_tokens_limit: int | None = DEFAULT_MAX_TOKENS_LIMIT,
    max_denoising_steps_limit: int | None = DEFAULT_MAX_DENOISING_STEPS_LIMIT,
) -> Starlette:
    """An OpenAI-compatible Starlette app serving `client`'s backend as one model.

    `model_id` is the id clients send as `model` (default: the backend's spec string, e.g. `torch:demo`). With
    `api_key`, every route but `/health` and `/openapi.json` needs `Authorization: Bearer <api_key>`. Bodies over
    `max_body_bytes` get a 413; a request asking for more than `max_tokens_limit` tokens or
    `max_denoising_steps_limit` steps per canvas gets a 400 (None: no limit). With `owns_client`, the client is
    closed when the app shuts down.
    """
    try:
        from diffusiongemma_sdk.server.app import create_app as create
    except ImportError as exc:
        raise ConfigurationError(f"{INSTALL_HINT} ({exc}).") from None
    return create(
        client,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        model_id=model_id,
        owns_client=owns_client,
        max_tokens_limit=max_tokens_limit,
        max_denoising_steps_limit=max_denoising_steps_limit,
    )
