"""`gguf:demo`: the torch engine's bundled demo model, converted to F32 GGUF on first use and cached per machine
(keyed by the checkpoint's bytes and this converter's layout version)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from diffusiongemma_sdk import ConfigurationError

__all__ = ["LAYOUT_VERSION", "cache_dir", "demo_gguf"]

LAYOUT_VERSION = 1
"""Bumped whenever the converter writes a file differently, so cached conversions are made again."""


def cache_dir() -> Path:
    """Where converted and built things are kept: $DIFFUSIONGEMMA_CACHE, else $XDG_CACHE_HOME or ~/.cache."""
    if os.environ.get("DIFFUSIONGEMMA_CACHE"):
        return Path(os.environ["DIFFUSIONGEMMA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffusiongemma"


def demo_gguf() -> Path:
    """The demo model as an F32 GGUF, converted now if not cached yet."""
    try:
        from diffusiongemma_torch.demo import DEMO_DIR
    except ImportError:
        raise ConfigurationError(
            "gguf:demo converts the demo model that ships with diffusiongemma-torch: pip install diffusiongemma-torch"
        ) from None
    from diffusiongemma_gguf._convert import convert_checkpoint

    digest = hashlib.sha256(f"layout {LAYOUT_VERSION}".encode())
    for file in sorted(DEMO_DIR.iterdir()):
        if file.is_file() and file.suffix in (".json", ".jinja", ".safetensors"):
            digest.update(file.name.encode() + file.read_bytes())
    target = cache_dir() / "gguf" / f"demo-f32-{digest.hexdigest()[:16]}.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            written = convert_checkpoint("demo", Path(scratch) / target.name, out_type="f32")
            written.replace(target)  # atomic: a concurrent first use sees the whole file or none
    return target
