"""`diffusiongemma build-llama-cpp`: llama-cpp-python built with a llama.cpp tree that carries PR #24423."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from diffusiongemma_sdk._cli.convert_gguf import gguf_module
from diffusiongemma_sdk._cli.failures import reporting_failures
from diffusiongemma_sdk._cli.options import DebugOption

__all__ = ["build_llama_cpp"]


def build_llama_cpp(
    source: Annotated[
        Path, typer.Argument(help="A llama.cpp checkout with PR #24423, or a .tar.gz of one (shared/vendor's).")
    ],
    cmake_args: Annotated[
        str | None, typer.Option("--cmake-args", help="CMake arguments; default: a portable CPU build.")
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, help="Parallel compile jobs; default: cores.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Build again even when a cached wheel exists.")] = False,
    debug: DebugOption = False,
) -> None:
    """Build and install a DiffusionGemma-enabled llama-cpp-python for gguf: (once per machine).

    llama-cpp-python 0.3.33's sdist (its bindings match the PR's llama.h) with
    its vendored llama.cpp replaced by SOURCE, built into a wheel that is cached
    by SOURCE's content hash, then installed into this Python. A second run
    with the same SOURCE installs the cached wheel without compiling. GPU
    builds: --cmake-args "-DGGML_CUDA=ON ...".
    """
    with reporting_failures(debug):
        build: Any = gguf_module("_build")
        build.build_llama_cpp(
            source, cmake_args=cmake_args or build.DEFAULT_CMAKE_ARGS, jobs=jobs, force=force, say=typer.echo
        )
