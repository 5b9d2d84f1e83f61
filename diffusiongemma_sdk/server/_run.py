"""`run_server`: build the client for a backend spec, wrap it in the app, and serve it with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from diffusiongemma_sdk._client import AsyncDiffusionGemma
from diffusiongemma_sdk._errors import ConfigurationError
from diffusiongemma_sdk.server._defaults import (
    DEFAULT_GRACEFUL_SHUTDOWN_S,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DENOISING_STEPS_LIMIT,
    DEFAULT_MAX_TOKENS_LIMIT,
    DEFAULT_PORT,
)

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

__all__ = ["run_server", "server_config"]

logger = logging.getLogger("diffusiongemma_sdk.server")
INSTALL_HINT = "The server needs Starlette and uvicorn: pip install 'diffusiongemma-sdk[server]'"


def run_server(
    backend_spec: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    *,
    model_id: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens_limit: int | None = DEFAULT_MAX_TOKENS_LIMIT,
    max_denoising_steps_limit: int | None = DEFAULT_MAX_DENOISING_STEPS_LIMIT,
    backend_api_key: str | None = None,
    backend_options: dict[str, Any] | None = None,
    timeout_graceful_shutdown: int = DEFAULT_GRACEFUL_SHUTDOWN_S,
    log_level: str = "info",
) -> None:
    """Serve `backend_spec` (any spec `AsyncDiffusionGemma` takes; None: `DIFFUSIONGEMMA_BACKEND`) over HTTP.

    Blocks until SIGINT/SIGTERM; in-flight requests then get `timeout_graceful_shutdown` seconds to finish before
    they are cancelled (their streams closed), and the backend is closed. Loopback only unless `host` says
    otherwise; `api_key` makes every route but `/health` and `/openapi.json` ask for `Authorization: Bearer
    <api_key>`. Requests over `max_tokens_limit` tokens or `max_denoising_steps_limit` steps per canvas get a 400.
    `backend_api_key` and `backend_options` go to the backend (an upstream server's key, `torch:` settings).
    Raises `ConfigurationError` for a bad spec, missing dependencies or an address it cannot listen on.
    """
    try:
        import uvicorn  # noqa: F401  (checked here, before the model loads)

        from diffusiongemma_sdk.server._app import create_app
    except ImportError as exc:
        raise ConfigurationError(f"{INSTALL_HINT} ({exc}).") from None
    client = AsyncDiffusionGemma(backend_spec, api_key=backend_api_key, backend_options=backend_options)
    app = create_app(
        client,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        model_id=model_id,
        owns_client=True,
        max_tokens_limit=max_tokens_limit,
        max_denoising_steps_limit=max_denoising_steps_limit,
    )
    if not api_key and not _is_loopback(host):
        logger.warning(
            "Serving on %s without an API key: anyone who can reach this address can use the model. "
            "Pass an API key to require one.",
            host,
        )
    server = _server(app, host, port, timeout_graceful_shutdown, log_level)
    try:
        server.run()
    except SystemExit:  # uvicorn's way of saying it could not start (e.g. the address is in use)
        raise ConfigurationError(f"The server could not start on {host}:{port}; see the log above.") from None


def server_config(
    app: ASGIApp,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout_graceful_shutdown: int = DEFAULT_GRACEFUL_SHUTDOWN_S,
    log_level: str | None = "info",
) -> uvicorn.Config:
    """The uvicorn settings `run_server` uses (tests start servers with them too)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        log_level=log_level,
        server_header=False,
    )


def _server(app: ASGIApp, host: str, port: int, timeout_graceful_shutdown: int, log_level: str) -> uvicorn.Server:
    import uvicorn

    config = server_config(
        app, host=host, port=port, timeout_graceful_shutdown=timeout_graceful_shutdown, log_level=log_level
    )
    return uvicorn.Server(config)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
