"""diffusiongemma-torch: the local PyTorch DiffusionGemma engine, spec `torch:<dir|hf-id|demo>`."""

from __future__ import annotations

from diffusiongemma_sdk import BackendOptions, ConfigurationError
from diffusiongemma_sdk._local.backend import engine_options
from diffusiongemma_torch._backend import TorchBackend, TorchOptions
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch.demo import DEMO_DIR

__all__ = ["DEMO_DIR", "TorchBackend", "TorchOptions", "create_backend"]


def create_backend(target: str, options: BackendOptions) -> TorchBackend:
    """Entry point of the `torch:` scheme: load the checkpoint now, so that problems show at once."""
    torch_options = engine_options(TorchOptions, options, "torch")
    if not target:
        raise ConfigurationError("torch: needs a checkpoint: torch:<folder>, torch:<org/name> or torch:demo.")
    location = target
    if target == "demo":
        if not (DEMO_DIR / "config.json").exists():
            raise ConfigurationError("This build of diffusiongemma-torch ships no demo model yet.")
        location = str(DEMO_DIR)
    checkpoint = load_checkpoint(location, device=torch_options.device, dtype=torch_options.dtype)
    return TorchBackend(f"torch:{target}", checkpoint, ChatFormat.from_directory(checkpoint.directory), torch_options)
