"""`diffusiongemma convert-gguf`: any checkpoint the torch backend loads, written in the `diffusion-gemma` GGUF
layout of llama.cpp PR #24423 (tensor names, metadata keys, tokenizer, chat template), one tensor at a time.

Needs diffusiongemma-torch (its checkpoint reader). Norms, scalars, the router and `rope_freqs` stay F32, as
llama.cpp's converter keeps them; a tensor whose rows do not split into whole Q8_0 blocks is written F16.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType, quants

from diffusiongemma_gguf import _layout as layout
from diffusiongemma_gguf._vocab import vocab_from_tokenizer_json
from diffusiongemma_sdk import ConfigurationError
from diffusiongemma_sdk._local.chat import read_template
from diffusiongemma_sdk._local.settings import GenerationDefaults

if TYPE_CHECKING:
    from diffusiongemma_torch._config import TextConfig

__all__ = ["OUT_TYPES", "OutType", "convert_checkpoint"]

OutType = Literal["f32", "f16", "bf16", "q8_0"]
OUT_TYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
_KEEP_F32 = ("ffn_gate_inp.weight",)  # the router: small, and llama.cpp's converter keeps it F32


@dataclass(frozen=True)
class _Planned:
    """A tensor of the output: its name, type and shape."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]


def convert_checkpoint(checkpoint: str, out: Path, *, out_type: OutType = "f16") -> Path:
    """Write `checkpoint` (a folder, a cached hub id, or `demo`) to `out` as a `diffusion-gemma` GGUF."""
    from diffusiongemma_torch._checkpoint import resolve_checkpoint_dir, text_tensors
    from diffusiongemma_torch._config import TextConfig
    from diffusiongemma_torch.demo import DEMO_DIR

    if out_type not in OUT_TYPES:
        raise ConfigurationError(f"--type must be one of {', '.join(OUT_TYPES)}, not {out_type!r}.")
    directory = DEMO_DIR if checkpoint == "demo" else resolve_checkpoint_dir(checkpoint)
    config = TextConfig.from_file(directory / "config.json")
    defaults = GenerationDefaults.from_file(
        directory / "generation_config.json", eos_token_ids=config.eos_token_ids, pad_token_id=config.pad_token_id
    )
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.exists():
        raise ConfigurationError(f"{directory} has no tokenizer.json to write into the GGUF.")
    template, special = read_template(directory)
    qtype, file_type = OUT_TYPES[out_type]

    writer = GGUFWriter(str(out), layout.ARCH)
    writer.add_name(directory.name)
    writer.add_file_type(int(file_type))
    _write_hyperparameters(writer, config, defaults)
    _write_tokenizer(writer, json.loads(tokenizer_file.read_text()), config, defaults, template, special)

    _check_complete(directory, config)
    # two passes over the checkpoint in the same order: every tensor's type and size first, then the data
    planned = [_plan(layout.gguf_name(tensor.name), tensor.shape, qtype) for tensor in text_tensors(directory)]
    rope_freqs = _rope_freqs(config)
    planned.append(_plan(layout.ROPE_FREQS, list(rope_freqs.shape), qtype))
    for item in planned:
        nbytes = _byte_count(item.shape, item.qtype)
        byte_shape = quants.quant_shape_to_byte_shape(item.shape, item.qtype) if _is_packed(item.qtype) else item.shape
        dtype = np.uint8 if _is_packed(item.qtype) else _NUMPY[item.qtype]
        writer.add_tensor_info(item.name, byte_shape, np.dtype(dtype), nbytes, raw_dtype=item.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for item, tensor in zip(planned, text_tensors(directory), strict=False):
        writer.write_tensor_data(_encode(tensor.read().float().numpy(), item.qtype))
    writer.write_tensor_data(rope_freqs)
    writer.close()
    return out


def _check_complete(directory: Path, config: TextConfig) -> None:
    """The checkpoint holds every weight the engine (so llama.cpp) needs."""
    import torch

    from diffusiongemma_torch._checkpoint import text_tensors
    from diffusiongemma_torch._model import DiffusionGemmaTextNet

    with torch.device("meta"):
        needed = set(DiffusionGemmaTextNet(config).state_dict())
    missing = needed - {tensor.name for tensor in text_tensors(directory)}
    if missing:
        raise ConfigurationError(f"{directory} lacks weights the engine needs: {sorted(missing)[:5]}")


_NUMPY = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}


def _plan(name: str, shape: list[int], qtype: GGMLQuantizationType) -> _Planned:
    if len(shape) == 1 or name.endswith(_KEEP_F32) or name.startswith("rope_freqs"):
        qtype = GGMLQuantizationType.F32
    block = GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        qtype = GGMLQuantizationType.F16
    return _Planned(name=name, qtype=qtype, shape=tuple(shape))


def _is_packed(qtype: GGMLQuantizationType) -> bool:
    return qtype not in _NUMPY


def _byte_count(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * shape[-1] // block * size


def _encode(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype in _NUMPY:
        return np.ascontiguousarray(data.astype(_NUMPY[qtype]))
    return quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


def _write_hyperparameters(writer: GGUFWriter, config: TextConfig, defaults: GenerationDefaults) -> None:
    sliding = config.sliding
    swa_dims = {dim for dim, is_swa in zip(config.head_dims, sliding, strict=True) if is_swa}
    full_dims = {dim for dim, is_swa in zip(config.head_dims, sliding, strict=True) if not is_swa}
    if len(swa_dims) > 1 or len(full_dims) != 1:
        raise ConfigurationError("llama.cpp's diffusion-gemma needs one head size per layer kind.")
    full_dim = full_dims.pop()
    swa_dim = swa_dims.pop() if swa_dims else full_dim
    full_rope = config.rope["full_attention"]
    sliding_rope = config.rope["sliding_attention"]
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(list(config.kv_heads))
    writer.add_key_length(full_dim)
    writer.add_value_length(full_dim)
    writer.add_key_length_swa(swa_dim)
    writer.add_value_length_swa(swa_dim)
    writer.add_sliding_window(config.sliding_window)
    writer.add_sliding_window_pattern(list(sliding))
    writer.add_rope_freq_base(float(full_rope["rope_theta"]))
    writer.add_rope_freq_base_swa(float(sliding_rope["rope_theta"]))
    writer.add_rope_dimension_count(full_dim)  # proportional RoPE stops frequencies through rope_freqs instead
    writer.add_rope_dimension_count_swa(swa_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_expert_count(config.num_experts)
    writer.add_expert_used_count(config.top_k_experts)
    writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    if config.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    writer.add_causal_attention(False)
    writer.add_uint32(layout.CANVAS_LENGTH, config.canvas_length)
    for field, key in layout.EB_KEYS.items():
        value = getattr(defaults, field)
        if isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_float32(key, float(value))


def _write_tokenizer(
    writer: GGUFWriter,
    tokenizer_json: dict[str, Any],
    config: TextConfig,
    defaults: GenerationDefaults,
    template: str,
    special: dict[str, str],
) -> None:
    vocab = vocab_from_tokenizer_json(tokenizer_json, config.vocab_size)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_pad_token_id(defaults.pad_token_id)
    # llama.cpp has three end-of-generation ids: end of text, of turn, of message (the model hands over to a tool)
    for add, token_id in zip(
        (writer.add_eos_token_id, writer.add_eot_token_id, writer.add_eom_token_id),
        defaults.eos_token_ids,
        strict=False,
    ):
        add(token_id)
    unk = vocab.token_id(special.get("unk_token", "<unk>"))
    if unk is not None:
        writer.add_unk_token_id(unk)
    writer.add_add_bos_token(False)  # the chat template writes <bos> itself
    writer.add_add_eos_token(False)
    writer.add_chat_template(template)


def _rope_freqs(config: TextConfig) -> np.ndarray:
    """1 for each frequency the full layers rotate, 1e30 for each that "proportional" RoPE leaves still."""
    half = next(dim for dim, swa in zip(config.head_dims, config.sliding, strict=True) if not swa) // 2
    rope = config.rope["full_attention"]
    rotated = half
    if rope.get("rope_type", "default") == "proportional":
        rotated = int(float(rope.get("partial_rotary_factor", 1.0)) * 2 * half // 2)
    return np.array([1.0] * rotated + [1e30] * (half - rotated), dtype=np.float32)
