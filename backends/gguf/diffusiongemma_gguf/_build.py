"""`diffusiongemma build-llama-cpp SOURCE`: llama-cpp-python built against a llama.cpp tree that carries PR #24423
(a git checkout, or a tarball such as shared/vendor's), installed into this Python, built once per machine.

The recipe (shared/vendor/README.md): llama-cpp-python 0.3.33's sdist, whose ctypes bindings match the PR tree's
`llama.h` (0.3.36's do not), with its `vendor/llama.cpp` replaced by the tree, built as a wheel. The wheel is kept
under the cache directory, keyed by the tree's content hash, the bindings' version, the CMake arguments, the Python
tag and the machine, so another run (CI, a fresh venv) installs it without compiling.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from diffusiongemma_gguf._demo import cache_dir
from diffusiongemma_gguf._support import PR_FUNCTIONS
from diffusiongemma_sdk import ConfigurationError

__all__ = ["BINDINGS_VERSION", "DEFAULT_CMAKE_ARGS", "BuildResult", "Tree", "build_llama_cpp"]

BINDINGS_VERSION = "0.3.33"
DEFAULT_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
_PR_MARK = "llama_diffusion_set_phase"
_SKIPPED = {".git", "build", ".cache"}  # not part of a tree's sources


@dataclass(frozen=True)
class BuildResult:
    """The wheel that was installed, and whether it was built now or found in the cache."""

    wheel: Path
    built: bool


def build_llama_cpp(
    source: Path,
    *,
    cmake_args: str = DEFAULT_CMAKE_ARGS,
    jobs: int | None = None,
    force: bool = False,
    install: bool = True,
    say: Callable[[str], None] = print,
) -> BuildResult:
    """Build (or find in the cache) and install a DiffusionGemma-enabled llama-cpp-python from `source`."""
    tree = Tree(source.expanduser())
    key = hashlib.sha256(
        "\n".join(
            [tree.digest(), BINDINGS_VERSION, cmake_args, platform.machine(), sys.implementation.cache_tag or ""]
        ).encode()
    ).hexdigest()[:20]
    wheels = cache_dir() / "llama-cpp" / key
    found = sorted(wheels.glob("llama_cpp_python-*.whl"))
    built = force or not found
    if built:
        say(f"building llama-cpp-python {BINDINGS_VERSION} with {source} (several minutes; cached as {wheels})")
        shutil.rmtree(wheels, ignore_errors=True)
        _build_wheel(tree, wheels, cmake_args, jobs or os.cpu_count() or 1)
        found = sorted(wheels.glob("llama_cpp_python-*.whl"))
        if not found:
            raise ConfigurationError(f"pip built no wheel into {wheels}; rerun with the output above.")
    else:
        say(f"llama-cpp-python for this source is already built: {found[-1]}")
    if install:
        _pip("uninstall", "--yes", "llama-cpp-python")
        _pip("install", str(found[-1]))
        _check_installed()
        say("installed; `diffusiongemma doctor` reports llama.cpp with DiffusionGemma")
    return BuildResult(wheel=found[-1], built=built)


class Tree:
    """A llama.cpp source tree: a directory, or a .tar.gz of one (one top folder)."""

    def __init__(self, source: Path) -> None:
        if source.is_dir():
            header = source / "include" / "llama.h"
            text = header.read_text(errors="replace") if header.exists() else ""
        elif source.is_file() and tarfile.is_tarfile(source):
            text = self._member_text(source, "include/llama.h")
        else:
            raise ConfigurationError(f"{source} is neither a llama.cpp folder nor a tarball of one.")
        if not text:
            raise ConfigurationError(f"{source} has no include/llama.h: it is not a llama.cpp source tree.")
        if _PR_MARK not in text:
            raise ConfigurationError(
                f"{source} is llama.cpp without PR #24423 (DiffusionGemma): its llama.h has no {_PR_MARK}. Check out "
                "the PR (git fetch origin pull/24423/head && git checkout FETCH_HEAD) or use shared/vendor's tarball."
            )
        self.source = source

    def digest(self) -> str:
        """A hash of the tree's contents (a tarball's bytes; a folder's files, .git and build folders left out)."""
        hasher = hashlib.sha256()
        if self.source.is_file():
            with self.source.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
            return hasher.hexdigest()
        for path in self._files():
            hasher.update(str(path.relative_to(self.source)).encode() + b"\0" + path.read_bytes())
        return hasher.hexdigest()

    def copy_to(self, target: Path) -> None:
        """The tree's sources at `target` (a folder that does not exist yet)."""
        if self.source.is_dir():
            shutil.copytree(self.source, target, ignore=lambda folder, names: [n for n in names if n in _SKIPPED])
            return
        with tempfile.TemporaryDirectory() as scratch, tarfile.open(self.source) as archive:
            _extract(archive, Path(scratch))
            (top,) = Path(scratch).iterdir()
            shutil.move(str(top), target)

    def _files(self) -> Iterator[Path]:
        for folder, names, files in os.walk(self.source):
            names[:] = sorted(n for n in names if n not in _SKIPPED)
            for name in sorted(files):
                yield Path(folder) / name

    @staticmethod
    def _member_text(archive_path: Path, suffix: str) -> str:
        with tarfile.open(archive_path) as archive:
            for member in archive:
                if member.isfile() and member.name.endswith("/" + suffix) and member.name.count("/") == 2:
                    handle = archive.extractfile(member)
                    return handle.read().decode(errors="replace") if handle is not None else ""
        return ""


def _build_wheel(tree: Tree, wheels: Path, cmake_args: str, jobs: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        sdist = _sdist(work)
        with tarfile.open(sdist) as archive:
            _extract(archive, work)
        package = work / f"llama_cpp_python-{BINDINGS_VERSION}"
        shutil.rmtree(package / "vendor" / "llama.cpp")
        tree.copy_to(package / "vendor" / "llama.cpp")
        environment = {**os.environ, "CMAKE_ARGS": cmake_args, "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs)}
        wheels.mkdir(parents=True, exist_ok=True)
        _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(package), env=environment)


def _extract(archive: tarfile.TarFile, target: Path) -> None:
    """Extract with tarfile's "data" filter (no links out, no devices) where this Python has it."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(target, filter="data")
    else:  # Python 3.10 before 3.10.12
        archive.extractall(target)


def _sdist(work: Path) -> Path:
    """llama-cpp-python's sdist, from the cache or the package index (kept for the next build)."""
    cached = cache_dir() / "llama-cpp" / "sdist" / f"llama_cpp_python-{BINDINGS_VERSION}.tar.gz"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        _pip(
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(work),
            f"llama-cpp-python=={BINDINGS_VERSION}",
        )
        shutil.move(str(work / cached.name), cached)
    return cached


def _pip(*arguments: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", *arguments]
    if subprocess.run(command, env=env, check=False).returncode != 0:
        raise ConfigurationError(f"{' '.join(command[2:])} failed; its output is above.")


def _check_installed() -> None:
    """The installed package's library has the PR's functions (in a fresh interpreter: this one may have loaded
    another build already)."""
    probe = f"import llama_cpp; lib = llama_cpp.llama_cpp._lib; print(all(hasattr(lib, n) for n in {PR_FUNCTIONS!r}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    if result.stdout.strip() != "True":
        raise ConfigurationError(f"the installed llama-cpp-python lacks the PR's functions: {result.stderr.strip()}")
