"""Server defaults, importable without the server's dependencies."""

from __future__ import annotations

__all__ = [
    "DEFAULT_GRACEFUL_SHUTDOWN_S",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DENOISING_STEPS_LIMIT",
    "DEFAULT_MAX_TOKENS_LIMIT",
    "DEFAULT_PORT",
]

DEFAULT_HOST = "127.0.0.1"  # loopback: nothing outside this machine can reach the model unless asked
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # room for a few base64 images
DEFAULT_GRACEFUL_SHUTDOWN_S = 10  # in-flight requests get this long to finish on shutdown, then are cancelled
DEFAULT_MAX_TOKENS_LIMIT = 32_768  # the most `max_tokens` one request may ask for (a 400 above)
DEFAULT_MAX_DENOISING_STEPS_LIMIT = 1_024  # the most `diffusion.max_denoising_steps` one request may ask for
