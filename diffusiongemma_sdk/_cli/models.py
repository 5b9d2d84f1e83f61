"""`diffusiongemma models`: the models a backend serves, and what it supports."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from diffusiongemma_sdk._backend import Capabilities, ModelInfo
from diffusiongemma_sdk._cli.failures import reporting_failures
from diffusiongemma_sdk._cli.interrupts import run_interruptible
from diffusiongemma_sdk._cli.options import (
    BackendChoice,
    BackendOption,
    BackendOptionsOption,
    DebugOption,
    backend_choice,
)

__all__ = ["models"]


class Listing(BaseModel):
    """What `models --json` prints."""

    backend: str
    models: list[ModelInfo]
    capabilities: Capabilities


def models(
    backend: BackendOption = None,
    backend_option: BackendOptionsOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout: backend, models, capabilities.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """List the models the backend serves and its capabilities.

    An openai: server is asked (GET /models), and capabilities it advertises
    replace the defaults; a local backend lists its own checkpoint.
    stdout: a table of models and a table of capabilities, or with --json one
    object with the backend, its models and its capabilities.
    """
    with reporting_failures(debug):
        listing = run_interruptible(partial(_listing, backend_choice(backend, backend_option)))
        if as_json:
            typer.echo(listing.model_dump_json())
            return
        served = Table("model", "owned by")
        for model in listing.models:
            served.add_row(model.id, model.owned_by or "")
        supported = Table("capability", "supported")
        for name, value in listing.capabilities.model_dump().items():
            supported.add_row(name, _shown(value))
        out = Console()
        out.print(Text.assemble(("backend: ", "bold"), listing.backend), soft_wrap=True)
        out.print(served)
        out.print(supported)


async def _listing(choice: BackendChoice) -> Listing:
    async with choice.client() as client:
        served = await client.models()
        capabilities = await client.backend.discover_capabilities()
        return Listing(backend=client.backend.name, models=served, capabilities=capabilities)


def _shown(value: object) -> str:
    """yes / no for a flag, 'unknown' for a count nobody reported."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "unknown" if value is None else str(value)
