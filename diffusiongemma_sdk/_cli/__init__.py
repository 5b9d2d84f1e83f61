"""The `diffusiongemma` command-line program: one typer app, one module per command.

A new command is a module with one function, registered here with `app.command()`. Shared parts: options declared
once (`--backend`, `--debug`, the request options) in `options.py`, error reporting in `failures.py`, Ctrl-C handling
for async work in `interrupts.py`, the live view and the answer's printing in `live.py` and `report.py`.
"""

from __future__ import annotations

import typer

from diffusiongemma_sdk._cli.bench import bench
from diffusiongemma_sdk._cli.build_llama_cpp import build_llama_cpp
from diffusiongemma_sdk._cli.chat import chat
from diffusiongemma_sdk._cli.convert_gguf import convert_gguf
from diffusiongemma_sdk._cli.doctor import doctor
from diffusiongemma_sdk._cli.generate import generate
from diffusiongemma_sdk._cli.models import models
from diffusiongemma_sdk._cli.serve import serve

__all__ = ["app", "main"]

app = typer.Typer(
    name="diffusiongemma",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold an API key
)


@app.callback()
def _root() -> None:
    """Run Google's DiffusionGemma on any backend: hosted NIM, an OpenAI-compatible server or a local engine.

    Exit codes: 0 done, 1 failed (one 'error:' line and a 'hint:' line on stderr), 2 bad usage, 130 interrupted.
    """


app.command()(generate)
app.command()(chat)
app.command()(bench)
app.command()(models)
app.command()(doctor)
app.command()(serve)
app.command(name="convert-gguf")(convert_gguf)
app.command(name="build-llama-cpp")(build_llama_cpp)


def main() -> None:
    """Run the program (the `diffusiongemma` console script)."""
    app(prog_name="diffusiongemma")
