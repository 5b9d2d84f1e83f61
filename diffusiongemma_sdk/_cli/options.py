"""Options shared by commands, declared once, and the checks and uses of option values."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from diffusiongemma_sdk._client import AsyncDiffusionGemma
from diffusiongemma_sdk._errors import InvalidRequestError
from diffusiongemma_sdk._types import DiffusionParams

__all__ = [
    "OUTPUT_PANEL",
    "REQUEST_PANEL",
    "BackendChoice",
    "BackendOption",
    "BackendOptionsOption",
    "DebugOption",
    "MaxTokensOption",
    "NoLiveOption",
    "SeedOption",
    "StepsOption",
    "SystemOption",
    "backend_choice",
    "request_options",
    "require_positive",
]

REQUEST_PANEL = "Request"
OUTPUT_PANEL = "Output"

BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        "-b",
        metavar="SPEC",
        show_default=False,
        help=(
            "Where the model runs: nim, nim:MODEL, openai:BASE_URL#MODEL, torch:DIR|HF-ID|demo or gguf:FILE. "
            "Default: the DIFFUSIONGEMMA_BACKEND variable, else nim when NVIDIA_API_KEY is set."
        ),
    ),
]

BackendOptionsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--backend-option",
        "-o",
        metavar="KEY=VALUE",
        show_default=False,
        help=(
            "A backend setting (backend_options), repeatable: -o max_batch=16 (torch:), -o max_concurrency=8 "
            "(remote). VALUE is read as JSON when it is JSON, else as text."
        ),
    ),
]

DebugOption = Annotated[bool, typer.Option("--debug", help="Show the full traceback when something fails.")]

MaxTokensOption = Annotated[
    int | None,
    typer.Option(metavar="N", help="Stop after N tokens. Default: the backend's.", rich_help_panel=REQUEST_PANEL),
]

StepsOption = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="At most N denoising steps per canvas (backends with per-request diffusion settings, e.g. torch:).",
        rich_help_panel=REQUEST_PANEL,
    ),
]

SeedOption = Annotated[
    int | None, typer.Option(metavar="N", help="Seed, for repeatable answers.", rich_help_panel=REQUEST_PANEL)
]

SystemOption = Annotated[
    str | None, typer.Option(metavar="TEXT", help="A system message before the prompt.", rich_help_panel=REQUEST_PANEL)
]

NoLiveOption = Annotated[
    bool, typer.Option("--no-live", help="No live view of the canvases.", rich_help_panel=OUTPUT_PANEL)
]


def require_positive(**values: int | None) -> None:
    """Refuse values below 1 before any backend loads: `require_positive(max_tokens=n)` checks `--max-tokens`."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise InvalidRequestError(f"--{name.replace('_', '-')} must be 1 or more, not {value}.")


def request_options(
    *, max_tokens: int | None, steps: int | None, seed: int | None, thinking: bool | None
) -> dict[str, Any]:
    """The keyword arguments of `generate()`/`stream()` that the request options set, checked first."""
    require_positive(max_tokens=max_tokens, steps=steps)
    return {
        "max_tokens": max_tokens,
        "thinking": thinking,
        "diffusion": None if steps is None else DiffusionParams(max_denoising_steps=steps),
        "seed": seed,
    }


@dataclass(frozen=True)
class BackendChoice:
    """The backend a command uses: `--backend` and its `--backend-option` settings."""

    spec: str | None
    options: dict[str, Any] = field(default_factory=dict)

    def client(self) -> AsyncDiffusionGemma:
        return AsyncDiffusionGemma(self.spec, backend_options=self.options or None)


def backend_choice(spec: str | None, entries: list[str] | None) -> BackendChoice:
    """`--backend` with its `-o KEY=VALUE` entries, checked before any backend loads."""
    options: dict[str, Any] = {}
    for entry in entries or []:
        key, sep, raw = entry.partition("=")
        if not sep or not key.strip():
            raise InvalidRequestError(f"--backend-option takes KEY=VALUE (for example max_batch=16), not {entry!r}.")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return BackendChoice(spec, options)
