"""`diffusiongemma doctor`: what this machine can run DiffusionGemma with, and how to fix what is missing."""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal

import httpx
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from diffusiongemma_sdk._cli.failures import EXIT_FAILED, reporting_failures
from diffusiongemma_sdk._cli.options import DebugOption
from diffusiongemma_sdk._remote import NIM_BASE_URL, NIM_MODEL
from diffusiongemma_sdk._spec import DISTRIBUTIONS, ENTRY_POINT_GROUP, NVIDIA_KEY_ENV
from diffusiongemma_sdk._version import __version__

__all__ = ["doctor"]

Status = Literal["ok", "warn", "fail", "unknown"]

MIN_PYTHON = (3, 10)
ENDPOINT_TIMEOUT = 5.0  # seconds for GET /models
GIB = 2**30
TORCH_FIX = f"for the local engine (torch:): pip install {DISTRIBUTIONS['torch']}"
GGUF_FIX = f"only gguf: needs it: pip install {DISTRIBUTIONS['gguf']}"
_MARKS: dict[Status, tuple[str, str]] = {
    "ok": ("ok  ", "green"),
    "warn": ("warn", "yellow"),
    "fail": ("FAIL", "bold red"),
    "unknown": ("?   ", "dim"),
}


class Check(BaseModel):
    """One finding: `fix` says what to do when the status is not ok."""

    name: str
    status: Status
    detail: str
    fix: str | None = None
    required: bool = False


class Diagnosis(BaseModel):
    """What `doctor --json` prints; `ok` is true when every required check passed."""

    ok: bool
    checks: list[Check]


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as one JSON object on stdout.")] = False,
    debug: DebugOption = False,
) -> None:
    """Check what this machine can run DiffusionGemma with; each problem comes with its fix.

    Checks: the Python version, torch and CUDA (each GPU with its total and
    free memory), the installed backends, whether llama.cpp (llama-cpp-python)
    supports DiffusionGemma (as gguf: reports it), whether NVIDIA_API_KEY is set (it is never shown)
    and whether the hosted endpoint (NVIDIA_BASE_URL, else the NIM default)
    answers GET /models within 5 s.
    Required: Python 3.10 or later, and one backend ready to run: the torch
    engine installed, or NVIDIA_API_KEY set with the endpoint answering and
    listing the model. Exit code 0 when the required checks pass, 1 otherwise.
    stdout: one line per check and its fix; with --json one object.
    """
    with reporting_failures(debug):
        diagnosis = _diagnose()
        if as_json:
            typer.echo(diagnosis.model_dump_json())
        else:
            _print(diagnosis, Console())
        if not diagnosis.ok:
            raise typer.Exit(EXIT_FAILED)


def _diagnose() -> Diagnosis:
    torch, torch_check = _torch()
    backends, schemes = _backends()
    key = os.environ.get(NVIDIA_KEY_ENV, "").strip()
    endpoint = _endpoint(key)
    checks = [
        _python(),
        Check(name="diffusiongemma-sdk", status="ok", detail=__version__),
        torch_check,
        _cuda(torch),
        backends,
        _llama_cpp(),
        Check(name=NVIDIA_KEY_ENV, status="ok", detail="set (not shown)")
        if key
        else Check(
            name=NVIDIA_KEY_ENV,
            status="warn",
            detail="not set",
            fix=f"the hosted nim backend needs one: get a key at build.nvidia.com, then export {NVIDIA_KEY_ENV}=...",
        ),
        endpoint,
        _ready(torch_engine=torch is not None and "torch" in schemes, hosted=bool(key) and endpoint.status == "ok"),
    ]
    return Diagnosis(ok=all(c.status == "ok" for c in checks if c.required), checks=checks)


def _print(diagnosis: Diagnosis, out: Console) -> None:
    width = max(len(check.name) for check in diagnosis.checks)
    for check in diagnosis.checks:
        mark, style = _MARKS[check.status]
        out.print(Text.assemble((mark, style), f" {check.name:<{width}}  ", check.detail), soft_wrap=True)
        if check.fix and check.status != "ok":
            out.print(Text.assemble(" " * (len(mark) + width + 3), ("fix: ", "bold cyan"), check.fix), soft_wrap=True)
    failed = [check.name for check in diagnosis.checks if check.required and check.status != "ok"]
    required = ", ".join(check.name for check in diagnosis.checks if check.required)
    out.print(f"Required checks failed: {', '.join(failed)}." if failed else f"Required checks pass ({required}).")


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= MIN_PYTHON:
        return Check(name="python", status="ok", detail=f"{version} ({sys.executable})", required=True)
    return Check(
        name="python",
        status="fail",
        detail=f"{version}: the SDK needs 3.10 or later",
        fix="install Python 3.10 or later and the SDK in it",
        required=True,
    )


def _torch() -> tuple[Any, Check]:
    """torch (None when it is missing or broken) and its check. Imported by name, so that the core's type check
    does not follow into torch."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return None, Check(name="torch", status="warn", detail="not installed", fix=TORCH_FIX)
    except Exception as error:  # installed, but its libraries do not load
        return None, Check(name="torch", status="warn", detail=f"installed, but fails to load: {error}", fix=TORCH_FIX)
    return torch, Check(name="torch", status="ok", detail=torch.__version__)


def _cuda(torch: Any) -> Check:
    if torch is None:
        return Check(name="cuda", status="unknown", detail="torch is needed to tell")
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            detail = "not available: this torch is a CPU build"
        else:
            detail = f"not available: torch is built for CUDA {torch.version.cuda} but sees no GPU"
        return Check(
            name="cuda",
            status="warn",
            detail=detail,
            fix="torch: runs on the CPU, slowly for the 26B model; for a GPU, install a CUDA build of torch "
            "(pytorch.org/get-started) and check the driver with nvidia-smi",
        )
    gpus = []
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        try:
            free, total = torch.cuda.mem_get_info(index)
        except RuntimeError:
            gpus.append(f"{index}: {name}, memory unknown")
        else:
            gpus.append(f"{index}: {name}, {total / GIB:.1f} GiB total, {free / GIB:.1f} GiB free")
    return Check(name="cuda", status="ok", detail=f"CUDA {torch.version.cuda}; " + "; ".join(gpus))


def _backends() -> tuple[Check, set[str]]:
    """The backend schemes installed (built in, or registered by a distribution) and their check."""
    installed = {"nim": "built in", "openai": "built in"}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        installed.setdefault(entry_point.name, f"{dist.name} {dist.version}" if dist else entry_point.value)
    detail = ", ".join(f"{scheme} ({source})" for scheme, source in installed.items())
    missing = [f"{scheme} (pip install {dist})" for scheme, dist in DISTRIBUTIONS.items() if scheme not in installed]
    if missing:
        detail += "; not installed: " + ", ".join(missing)
    return Check(name="backends", status="ok", detail=detail), set(installed)


def _llama_cpp() -> Check:
    """Whether gguf: can run on llama.cpp here: diffusiongemma-gguf's probe, which the backend's typed error also
    reports (llama-cpp-python exposes no architecture list; builds with PR #24423 carry its functions)."""
    try:
        gguf = importlib.import_module("diffusiongemma_gguf")
    except ImportError:
        return Check(name="llama.cpp", status="warn", detail="diffusiongemma-gguf is not installed", fix=GGUF_FIX)
    support = gguf.llama_cpp_support()
    if support.ready:
        return Check(name="llama.cpp", status="ok", detail=support.detail)
    return Check(
        name="llama.cpp", status="warn" if support.known else "unknown", detail=support.detail, fix=support.remedy
    )


def _endpoint(key: str) -> Check:
    """Whether the hosted endpoint answers GET /models (with the key, when there is one) and lists the model."""
    base = (os.environ.get("NVIDIA_BASE_URL") or NIM_BASE_URL).rstrip("/")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    network_fix = "check the network connection (and any proxy); NVIDIA_BASE_URL overrides the URL"
    try:
        response = httpx.get(f"{base}/models", headers=headers, timeout=ENDPOINT_TIMEOUT)
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        reason = str(error) or type(error).__name__
        return Check(name="endpoint", status="warn", detail=f"{base} does not answer: {reason}", fix=network_fix)
    if response.status_code in (401, 403):
        return Check(
            name="endpoint",
            status="warn",
            detail=f"{base} refused the key (HTTP {response.status_code})",
            fix=f"check {NVIDIA_KEY_ENV} at build.nvidia.com",
        )
    if response.is_error:
        return Check(
            name="endpoint",
            status="warn",
            detail=f"{base}/models answered HTTP {response.status_code}",
            fix=f"the service may be down: try again later; {network_fix}",
        )
    try:
        listed = {model["id"] for model in response.json()["data"]}
    except (ValueError, KeyError, TypeError):
        return Check(
            name="endpoint",
            status="warn",
            detail=f"{base}/models answered, but not with a model list",
            fix="NVIDIA_BASE_URL should be the API's base URL, ending in /v1",
        )
    if NIM_MODEL not in listed:
        return Check(
            name="endpoint",
            status="warn",
            detail=f"{base} answers, but does not list {NIM_MODEL}",
            fix="name a model it lists: --backend nim:MODEL",
        )
    return Check(name="endpoint", status="ok", detail=f"{base} answers and lists {NIM_MODEL}")


def _ready(*, torch_engine: bool, hosted: bool) -> Check:
    ways = [way for way, ready in (("torch (local engine)", torch_engine), ("nim (hosted)", hosted)) if ready]
    if ways:
        return Check(name="ready", status="ok", detail="can run on " + " and ".join(ways), required=True)
    return Check(
        name="ready",
        status="fail",
        detail="no backend is ready to run here",
        fix=f"{TORCH_FIX}; or set {NVIDIA_KEY_ENV} for hosted NIM (check a server of your own with: "
        "diffusiongemma models --backend openai:URL)",
        required=True,
    )
