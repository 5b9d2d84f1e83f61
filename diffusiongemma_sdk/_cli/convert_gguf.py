"""`diffusiongemma convert-gguf`: a checkpoint the torch backend loads, written as a DiffusionGemma GGUF."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from diffusiongemma_sdk._cli.failures import CommandError, reporting_failures
from diffusiongemma_sdk._cli.options import DebugOption

__all__ = ["convert_gguf", "gguf_module"]


def convert_gguf(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint folder, a hub id in the local cache, or demo.")],
    out: Annotated[Path, typer.Argument(help="The .gguf file to write.")],
    out_type: Annotated[
        Literal["f32", "f16", "bf16", "q8_0"],
        typer.Option("--type", help="The weights' type; norms, scalars and the router stay F32."),
    ] = "f16",
    debug: DebugOption = False,
) -> None:
    """Write a checkpoint as a DiffusionGemma GGUF (llama.cpp PR #24423's diffusion-gemma layout).

    Takes any checkpoint the torch backend loads (needs diffusiongemma-torch and
    diffusiongemma-gguf). The file runs with --backend gguf:OUT, on llama.cpp
    or, with -o engine=torch, on the torch engine.
    stdout: the path written and its size.
    """
    with reporting_failures(debug):
        convert = gguf_module("_convert").convert_checkpoint
        written = convert(checkpoint, out, out_type=out_type)
        Console().print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB, {out_type})", soft_wrap=True)


def gguf_module(name: str) -> Any:
    """A module of diffusiongemma-gguf, imported by name (the core's type check does not follow into it)."""
    try:
        return importlib.import_module(f"diffusiongemma_gguf.{name}")
    except ImportError as error:
        raise CommandError(str(error), "pip install diffusiongemma-gguf diffusiongemma-torch") from None
