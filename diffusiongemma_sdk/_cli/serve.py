"""`diffusiongemma serve`: an OpenAI-compatible HTTP server over any backend (the `server` extra)."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Annotated

import typer

from diffusiongemma_sdk._cli.failures import CommandError, reporting_failures
from diffusiongemma_sdk._cli.options import BackendOption, BackendOptionsOption, DebugOption, backend_choice
from diffusiongemma_sdk.server._defaults import (
    DEFAULT_GRACEFUL_SHUTDOWN_S,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DENOISING_STEPS_LIMIT,
    DEFAULT_MAX_TOKENS_LIMIT,
    DEFAULT_PORT,
)

__all__ = ["serve"]

API_KEY_ENV = "DIFFUSIONGEMMA_SERVER_API_KEY"
SERVER_PACKAGES = ("starlette", "uvicorn")


def serve(
    backend: BackendOption = None,
    backend_option: BackendOptionsOption = None,
    host: Annotated[
        str, typer.Option(metavar="ADDRESS", help="Where to listen; 127.0.0.1 keeps the server to this machine.")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(metavar="N", min=1, max=65535, help="The port to listen on.")] = DEFAULT_PORT,
    api_key: Annotated[
        str | None,
        typer.Option(
            metavar="KEY",
            envvar=API_KEY_ENV,
            show_default=False,
            help="Ask every request (but /health) for 'Authorization: Bearer KEY'. "
            "Prefer the variable: other users of the machine can see a command line.",
        ),
    ] = None,
    model_id: Annotated[
        str | None,
        typer.Option(metavar="NAME", show_default=False, help="The model id clients send. Default: the backend spec."),
    ] = None,
    max_tokens_limit: Annotated[
        int, typer.Option(metavar="N", min=1, help="Answer 400 to a request asking for more than N tokens.")
    ] = DEFAULT_MAX_TOKENS_LIMIT,
    max_steps_limit: Annotated[
        int,
        typer.Option(
            metavar="N", min=1, help="Answer 400 to a request asking for more than N denoising steps per canvas."
        ),
    ] = DEFAULT_MAX_DENOISING_STEPS_LIMIT,
    max_body_bytes: Annotated[
        int, typer.Option(metavar="N", min=1, help="Answer 413 to a request body over N bytes.")
    ] = DEFAULT_MAX_BODY_BYTES,
    shutdown_timeout: Annotated[
        int,
        typer.Option(metavar="S", min=0, help="On Ctrl-C, give requests in flight S seconds, then cancel them."),
    ] = DEFAULT_GRACEFUL_SHUTDOWN_S,
    debug: DebugOption = False,
) -> None:
    """Serve the backend as an OpenAI-compatible API at http://HOST:PORT/v1.

    Any OpenAI client can use it, and so can this SDK as --backend
    openai:http://HOST:PORT/v1. The backend loads once, before the server
    listens. Ctrl-C stops the server, after giving requests in flight time to finish.
    Needs the server extra: pip install 'diffusiongemma-sdk\\[server]'.
    """
    with reporting_failures(debug):
        missing = [name for name in SERVER_PACKAGES if find_spec(name) is None]
        if missing:
            raise CommandError(
                f"The server needs {' and '.join(missing)}, which this Python lacks.",
                "install the server extra: pip install 'diffusiongemma-sdk[server]'",
            )
        choice = backend_choice(backend, backend_option)
        from diffusiongemma_sdk.server import run_server

        run_server(
            choice.spec,
            backend_options=choice.options or None,
            host=host,
            port=port,
            api_key=api_key or None,
            model_id=model_id,
            max_tokens_limit=max_tokens_limit,
            max_denoising_steps_limit=max_steps_limit,
            max_body_bytes=max_body_bytes,
            timeout_graceful_shutdown=shutdown_timeout,
        )
