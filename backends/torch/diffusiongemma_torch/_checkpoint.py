"""Find and load a DiffusionGemma checkpoint as published: config, generation config, sharded safetensors."""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from diffusiongemma_sdk import ConfigurationError
from diffusiongemma_sdk._local.settings import GenerationDefaults
from diffusiongemma_torch._admission import check_load_memory
from diffusiongemma_torch._config import TextConfig
from diffusiongemma_torch._model import DiffusionGemmaTextNet

__all__ = [
    "Checkpoint",
    "TextTensor",
    "assemble_net",
    "default_device_and_dtype",
    "load_checkpoint",
    "resolve_checkpoint_dir",
    "start_intra_op_threads",
    "text_parameters",
    "text_tensors",
]

_DECODER = "model.decoder."
_ENCODER_SCALAR = "model.encoder.language_model.layers."
_SKIPPED = ("model.encoder.", "lm_head.")  # vision tower, tied encoder copies, tied head
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Checkpoint:
    """A loaded text network with its settings."""

    directory: Path
    net: DiffusionGemmaTextNet
    config: TextConfig
    defaults: GenerationDefaults


def resolve_checkpoint_dir(target: str) -> Path:
    """A local directory, or a hub id already in the local Hugging Face cache (nothing is downloaded)."""
    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigurationError(f"{path} has no config.json; point torch: at a DiffusionGemma checkpoint folder.")
        return path
    if target.count("/") == 1 and not target.startswith((".", "/", "~")):
        snapshot = _cached_snapshot(target)
        if snapshot is not None:
            return snapshot
        raise ConfigurationError(
            f"{target} is not in the local Hugging Face cache ({_hub_cache()}), and nothing is downloaded at run time. "
            f"Fetch it first: huggingface-cli download {target}"
        )
    raise ConfigurationError(f"No checkpoint folder at {path}. Use torch:<folder>, torch:<org/name> or torch:demo.")


def default_device_and_dtype(device: str | None, dtype: str | torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """CUDA bf16 when a GPU is present, else CPU fp32; either can be overridden."""
    chosen = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        return chosen, torch.bfloat16 if chosen.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return chosen, dtype
    if dtype not in _DTYPES:
        raise ConfigurationError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
    return chosen, _DTYPES[dtype]


@dataclass(frozen=True)
class TextTensor:
    """One text weight of a checkpoint, under the engine's name: its shape, and `read()` for its data (valid while
    `text_tensors` is at it)."""

    name: str
    shape: list[int]
    read: Callable[[], torch.Tensor]


def text_tensors(directory: Path) -> Iterator[TextTensor]:
    """The checkpoint's text weights under the engine's names, read lazily; vision weights are skipped."""
    for file in _weight_files(directory):
        with safe_open(file, framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118  (safe_open has no __iter__)
                local = _local_name(name)
                if local is not None:
                    shape = list(handle.get_slice(name).get_shape())
                    yield TextTensor(local, shape, functools.partial(handle.get_tensor, name))


def text_parameters(directory: Path) -> int:
    """How many parameters of the checkpoint the text engine loads."""
    return sum(math.prod(tensor.shape) for tensor in text_tensors(directory))


def load_checkpoint(target: str, *, device: str | None = None, dtype: str | torch.dtype | None = None) -> Checkpoint:
    """Load the text path of a checkpoint; vision weights are skipped."""
    directory = resolve_checkpoint_dir(target)
    config = TextConfig.from_file(directory / "config.json")
    defaults = GenerationDefaults.from_file(
        directory / "generation_config.json", eos_token_ids=config.eos_token_ids, pad_token_id=config.pad_token_id
    )
    chosen_device, chosen_dtype = default_device_and_dtype(device, dtype)
    check_load_memory(directory, text_parameters(directory), config, chosen_device, chosen_dtype)
    state = {
        tensor.name: tensor.read().to(device=chosen_device, dtype=chosen_dtype) for tensor in text_tensors(directory)
    }
    net = assemble_net(config, state, source=str(directory))
    return Checkpoint(directory=directory, net=net, config=config, defaults=defaults)


def assemble_net(config: TextConfig, state: dict[str, torch.Tensor], *, source: str) -> DiffusionGemmaTextNet:
    """The text network with `state` (the engine's names, on one device) as its weights, without copying them."""
    with torch.device("meta"):
        net = DiffusionGemmaTextNet(config)
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise ConfigurationError(f"{source} lacks weights the engine needs: {sorted(missing)[:5]}")
    net.load_state_dict(state, strict=True, assign=True)
    start_intra_op_threads()
    device = net.embed_tokens.weight.device
    for layer_type in set(config.layer_types):  # non-persistent buffers stay on meta after assign
        net.register_buffer(f"{layer_type}_inv_freq", config.rope_inv_freq(layer_type).to(device), persistent=False)
    return net.eval()


def start_intra_op_threads() -> None:
    """Run one parallel torch operation on this (the loading) thread. A process whose first parallel torch operation
    ran in the engine's worker thread generated up to 10 times slower on CPU (torch 2.13, the demo model; a checkpoint
    stored in bf16 escaped it, its conversion to fp32 being such an operation)."""
    torch.ones(1 << 20).sum()


def _local_name(name: str) -> str | None:
    if name.startswith(_DECODER):
        return name[len(_DECODER) :]
    if name.startswith(_ENCODER_SCALAR) and name.endswith(".layer_scalar"):
        index = name[len(_ENCODER_SCALAR) :].split(".")[0]
        return f"layers.{index}.encoder_layer_scalar"
    return None


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / shard for shard in shards]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConfigurationError(f"{directory} has no *.safetensors weights.")
    return files


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def _cached_snapshot(repo_id: str) -> Path | None:
    repo = _hub_cache() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.exists():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if (snapshot / "config.json").exists():
            return snapshot
    snapshots = sorted((repo / "snapshots").glob("*/config.json")) if (repo / "snapshots").exists() else []
    return snapshots[-1].parent if snapshots else None
