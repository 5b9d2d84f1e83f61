"""Remote backends: the hosted NVIDIA NIM API (`nim`) and any OpenAI-compatible server (`openai:`)."""

from __future__ import annotations

import os
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from diffusiongemma_sdk._backend import BackendOptions, Capabilities
from diffusiongemma_sdk._errors import ConfigurationError, describe_validation_error
from diffusiongemma_sdk._remote.backend import STREAM_IDLE_TIMEOUT, RemoteBackend

__all__ = [
    "NIM_BASE_URL",
    "NIM_CAPABILITIES",
    "NIM_MODEL",
    "OPENAI_COMPATIBLE_CAPABILITIES",
    "RemoteBackend",
    "RemoteOptions",
    "create_nim_backend",
    "create_openai_backend",
]

NIM_BASE_URL = "https://integrate.api.nvidia.com/v1"
NIM_MODEL = "google/diffusiongemma-26b-a4b-it"
NIM_REQUESTS_PER_MINUTE = 40  # the hosted trial's documented rate per key

# Hosted NIM and released vLLM ignore per-request diffusion knobs, never stream drafts, reject constrained
# decoding with a 400, and NIM's DiffusionGemma variant lists logprobs as unsupported.
NIM_CAPABILITIES = Capabilities(per_request_diffusion=False, denoise_stream=False, images=True, context_window=262_144)
# A server's context window is its own setting (vLLM's --max-model-len), unknown unless it advertises it.
OPENAI_COMPATIBLE_CAPABILITIES = NIM_CAPABILITIES.model_copy(update={"context_window": None})


class RemoteOptions(BaseModel):
    """Remote-only settings, passed as `AsyncDiffusionGemma(..., backend_options={...})`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stream_idle_timeout: float = Field(default=STREAM_IDLE_TIMEOUT, gt=0, description="Seconds without a byte.")
    requests_per_minute: int | None = Field(default=None, ge=1, description="Client-side rate limit; None: off.")
    max_concurrency: int | None = Field(default=None, ge=1, description="Requests in flight at once; None: any.")


def create_nim_backend(target: str, options: BackendOptions) -> RemoteBackend:
    """`nim` or `nim:<model>`: the hosted API, key from `NVIDIA_API_KEY` (`NVIDIA_BASE_URL` overrides the URL)."""
    api_key = options.api_key or _env_secret("NVIDIA_API_KEY")
    if api_key is None:
        raise ConfigurationError(
            "The nim backend needs an API key: set NVIDIA_API_KEY (get one at build.nvidia.com) or pass api_key=."
        )
    model = target or NIM_MODEL
    return _remote_backend(
        options,
        {"requests_per_minute": NIM_REQUESTS_PER_MINUTE},
        name=f"nim:{model}",
        base_url=os.environ.get("NVIDIA_BASE_URL") or NIM_BASE_URL,
        model=model,
        api_key=api_key,
        capabilities=NIM_CAPABILITIES,
    )


def create_openai_backend(target: str, options: BackendOptions) -> RemoteBackend:
    """`openai:<base_url>[#<model>]`: any OpenAI-compatible server; key from api_key= or `DIFFUSIONGEMMA_API_KEY`.

    Capabilities the server advertises in its `GET /models` entry (as `diffusiongemma serve` does) replace
    `OPENAI_COMPATIBLE_CAPABILITIES`; they are read once, before the first request is checked.
    """
    base_url, _, model = target.partition("#")
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        url = httpx.URL("")
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"The openai backend needs a base URL, e.g. openai:http://127.0.0.1:8000/v1#my-model (got {target!r})."
        )
    return _remote_backend(
        options,
        {},
        name=f"openai:{target}",
        base_url=base_url,
        model=model or None,
        api_key=options.api_key or _env_secret("DIFFUSIONGEMMA_API_KEY"),
        capabilities=OPENAI_COMPATIBLE_CAPABILITIES,
        discover=True,
    )


def _remote_backend(options: BackendOptions, defaults: dict[str, Any], **fields: Any) -> RemoteBackend:
    try:
        remote = RemoteOptions.model_validate({**defaults, **options.extra})
    except ValidationError as exc:
        raise ConfigurationError(
            f"Invalid backend_options for a remote backend ({describe_validation_error(exc)}). "
            f"Known options: {', '.join(RemoteOptions.model_fields)}."
        ) from None
    return RemoteBackend(**fields, timeout=options.timeout, max_retries=options.max_retries, **remote.model_dump())


def _env_secret(name: str) -> SecretStr | None:
    value = os.environ.get(name, "").strip()
    return SecretStr(value) if value else None
