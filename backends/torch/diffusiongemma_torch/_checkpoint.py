"""Find and load a DiffusionGemma checkpoint as published: config, generation config, sharded safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from diffusiongemma_sdk import ConfigurationError, InvalidRequestError
from diffusiongemma_torch._config import GenerationDefaults, TextConfig
from diffusiongemma_torch._engine import PREFILL_CHUNK
from diffusiongemma_torch._model import DiffusionGemmaTextNet

__all__ = [
    "Checkpoint",
    "batch_fits",
    "cache_bytes",
    "check_request_memory",
    "default_device_and_dtype",
    "estimate_bytes",
    "load_checkpoint",
    "request_bytes",
    "resolve_checkpoint_dir",
]

_DECODER = "model.decoder."
_ENCODER_SCALAR = "model.encoder.language_model.layers."
_SKIPPED = ("model.encoder.", "lm_head.")  # vision tower, tied encoder copies, tied head
_DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WORKSPACE_COPIES = 6  # logits, probabilities, noise and entropy buffers of one canvas, fp32


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


def estimate_bytes(directory: Path, config: TextConfig, dtype: torch.dtype, batch: int = 1) -> int:
    """Memory a generation needs: the text weights in `dtype` plus a canvas's vocab-sized fp32 workspace."""
    parameters = sum(_numel(shape) for name, shape in _tensor_shapes(directory).items() if _keep(name))
    return parameters * _DTYPE_BYTES[dtype] + batch * _workspace_bytes(config)


def cache_bytes(config: TextConfig, tokens: int, dtype: torch.dtype) -> int:
    """The KV cache of one request with `tokens` of context (sliding layers keep their window)."""
    return sum(_layer_cache_elements(config, tokens)) * _DTYPE_BYTES[dtype]


def request_bytes(config: TextConfig, tokens: int, dtype: torch.dtype, prefill_chunk: int) -> int:
    """Memory one request adds to the loaded weights for `tokens` of context (prompt and answer).

    Its KV cache; the largest transient of one layer's attention: that layer's keys and values copied once (the cache
    and the new tokens joined) and once per query head when they are expanded for SDPA (every masked pass, and
    unmasked ones on layers whose head dim is over 256); the prefill's two boolean masks of a chunk against the
    context, and the additive copy SDPA makes of one. SDPA does not materialize the attention scores (measured on
    CPU, torch 2.13: a 1,024 x 32,768 masked pass over 8 heads grew the peak by 135 MB, the float mask, not the
    1 GiB of scores).
    """
    size = _DTYPE_BYTES[dtype]
    layers = _layer_cache_elements(config, tokens)
    groups = [config.num_heads // kv_heads for kv_heads in config.kv_heads]
    transient = max(elements * (1 + group if group > 1 else 1) for elements, group in zip(layers, groups, strict=True))
    chunk = min(tokens, prefill_chunk)
    return (sum(layers) + transient) * size + chunk * tokens * (2 + size)


def _layer_cache_elements(config: TextConfig, tokens: int) -> list[int]:
    return [
        2 * heads * head_dim * (min(tokens, config.sliding_window - 1) if sliding else tokens)
        for sliding, head_dim, heads in zip(config.sliding, config.head_dims, config.kv_heads, strict=True)
    ]


def batch_fits(config: TextConfig, tokens: int, batch: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `batch` requests of `tokens` context each (the longest of them) fit in the memory left on `device`.

    Per row: its `request_bytes` twice (the rows still being denoised get a compact copy of the cache) and a canvas's
    vocab-sized workspace.
    """
    per_row = 2 * request_bytes(config, tokens, dtype, PREFILL_CHUNK) + _workspace_bytes(config)
    return _free_when_short(batch * per_row, device) is None


def _workspace_bytes(config: TextConfig) -> int:
    """One canvas's fp32 logits, probabilities, noise and entropy buffers."""
    return _WORKSPACE_COPIES * config.canvas_length * config.vocab_size * 4


def check_request_memory(config: TextConfig, tokens: int, dtype: torch.dtype, device: torch.device) -> None:
    """Raise a clear error before a request whose context cannot fit in the memory left on `device`."""
    needed = request_bytes(config, tokens, dtype, PREFILL_CHUNK)
    if (available := _free_when_short(needed, device)) is not None:
        raise InvalidRequestError(
            f"A context of {tokens} tokens (prompt plus max_tokens) needs about {needed / 2**30:.1f} GiB for its KV "
            f"cache on {device}, but {available / 2**30:.1f} GiB is free. Lower max_tokens, shorten the prompt, or "
            "free memory."
        )


def load_checkpoint(target: str, *, device: str | None = None, dtype: str | torch.dtype | None = None) -> Checkpoint:
    """Load the text path of a checkpoint; vision weights are skipped."""
    directory = resolve_checkpoint_dir(target)
    config = TextConfig.from_file(directory / "config.json")
    defaults = GenerationDefaults.from_file(directory / "generation_config.json", config)
    chosen_device, chosen_dtype = default_device_and_dtype(device, dtype)
    _check_memory(directory, config, chosen_device, chosen_dtype)
    with torch.device("meta"):
        net = DiffusionGemmaTextNet(config)
    state = {}
    for file in _weight_files(directory):
        with safe_open(file, framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118  (safe_open has no __iter__)
                local = _local_name(name)
                if local is not None:
                    state[local] = handle.get_tensor(name).to(device=chosen_device, dtype=chosen_dtype)
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise ConfigurationError(f"{directory} lacks weights the engine needs: {sorted(missing)[:5]}")
    net.load_state_dict(state, strict=True, assign=True)
    for layer_type in set(config.layer_types):  # non-persistent buffers stay on meta after assign
        net.register_buffer(
            f"{layer_type}_inv_freq", config.rope_inv_freq(layer_type).to(chosen_device), persistent=False
        )
    return Checkpoint(directory=directory, net=net.eval(), config=config, defaults=defaults)


def _local_name(name: str) -> str | None:
    if name.startswith(_DECODER):
        return name[len(_DECODER) :]
    if name.startswith(_ENCODER_SCALAR) and name.endswith(".layer_scalar"):
        index = name[len(_ENCODER_SCALAR) :].split(".")[0]
        return f"layers.{index}.encoder_layer_scalar"
    return None


def _keep(name: str) -> bool:
    return _local_name(name) is not None


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / shard for shard in shards]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConfigurationError(f"{directory} has no *.safetensors weights.")
    return files


def _tensor_shapes(directory: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for file in _weight_files(directory):
        with safe_open(file, framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118
                shapes[name] = list(handle.get_slice(name).get_shape())
    return shapes


def _numel(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _check_memory(directory: Path, config: TextConfig, device: torch.device, dtype: torch.dtype) -> None:
    needed = estimate_bytes(directory, config, dtype)
    if (available := _free_when_short(needed, device)) is not None:
        raise ConfigurationError(
            f"Loading {directory.name} on {device} in {str(dtype).removeprefix('torch.')} needs about "
            f"{needed / 2**30:.1f} GiB but {available / 2**30:.1f} GiB is free. Free memory, use a quantized build "
            "(gguf:), or pick another device/dtype (device=..., dtype=...)."
        )


def _free_when_short(needed: int, device: torch.device) -> int | None:
    """The bytes free on `device` when they are fewer than `needed`; None when enough is free or it is unknown."""
    available = _available_bytes(device)
    return available if available is not None and needed > available else None


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


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
