"""`gguf:<file>` with `engine=torch`: the file's tensors dequantized (gguf's own dequantizers: F16, BF16, Q8_0,
Q4_K, Q6_K and the rest) into the torch engine's network, with the file's tokenizer and chat template, behind the
torch backend. Any DiffusionGemma GGUF so runs where llama.cpp cannot (stock installs, no build)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gguf import ReaderTensor, quants

from diffusiongemma_gguf import _layout as layout
from diffusiongemma_gguf._header import GGUFHeader
from diffusiongemma_gguf._vocab import tokenizer_from_vocab
from diffusiongemma_sdk import ConfigurationError
from diffusiongemma_torch._admission import check_load_memory
from diffusiongemma_torch._backend import TorchBackend, TorchOptions
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch._checkpoint import Checkpoint, assemble_net, default_device_and_dtype
from diffusiongemma_torch._config import TextConfig

__all__ = ["text_config", "torch_backend"]

_SPLIT_EXPERTS = ("ffn_gate_exps.weight", "ffn_up_exps.weight")  # some converters write these instead of gate_up


def torch_backend(name: str, header: GGUFHeader, options: TorchOptions) -> TorchBackend:
    """The torch backend running `header`'s file."""
    config = text_config(header)
    device, dtype = default_device_and_dtype(options.device, options.dtype)
    parameters = sum(math.prod(int(n) for n in tensor.shape) for tensor in header.reader.tensors)
    check_load_memory(header.path, parameters, config, device, dtype)
    state = {name: torch.tensor(array, device=device, dtype=dtype) for name, array in _weights(header).items()}
    net = assemble_net(config, state, source=str(header.path))
    checkpoint = Checkpoint(directory=header.path, net=net, config=config, defaults=header.defaults)
    unk = header.metadata.get("tokenizer.ggml.unknown_token_id")
    tokenizer = tokenizer_from_vocab(header.vocab, unk_token_id=unk if isinstance(unk, int) else None)
    chat = ChatFormat(header.chat_template, header.special_tokens, tokenizer)
    return TorchBackend(name, checkpoint, chat, options)


def text_config(header: GGUFHeader) -> TextConfig:
    """The network's shape from the file's hyperparameters (what llama.cpp's loader reads)."""
    layers = int(header.arch("block_count"))
    pattern = header.arch("attention.sliding_window_pattern")
    sliding = [bool(x) for x in pattern] if isinstance(pattern, list) else [bool(pattern)] * layers
    full_dim = int(header.arch("attention.key_length"))
    swa_dim = int(header.arch("attention.key_length_swa", full_dim))
    heads_kv = header.arch("attention.head_count_kv")
    kv_heads = [int(x) for x in heads_kv] if isinstance(heads_kv, list) else [int(heads_kv)] * layers
    if (
        int(header.arch("rope.dimension_count", full_dim)) != full_dim
        or int(header.arch("rope.dimension_count_swa", swa_dim)) != swa_dim
    ):
        raise ConfigurationError(f"{header.path.name} rotates part of each head; the torch engine rotates whole heads.")
    rotated = int(np.count_nonzero(_tensor(header, layout.ROPE_FREQS) < 1e20))
    full_rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(header.arch("rope.freq_base", 1e4))}
    if rotated < full_dim // 2:
        full_rope.update(rope_type="proportional", partial_rotary_factor=2 * rotated / full_dim)
    eos = header.metadata.get("tokenizer.ggml.eos_token_id")
    return TextConfig(
        vocab_size=len(header.vocab.tokens),
        hidden_size=int(header.arch("embedding_length")),
        intermediate_size=int(header.arch("feed_forward_length")),
        num_layers=layers,
        num_heads=int(header.arch("attention.head_count")),
        layer_types=tuple("sliding_attention" if s else "full_attention" for s in sliding),
        head_dims=tuple(swa_dim if s else full_dim for s in sliding),
        kv_heads=tuple(kv_heads),
        sliding_window=int(header.arch("attention.sliding_window")),
        rope={
            "sliding_attention": {
                "rope_type": "default",
                "rope_theta": float(header.arch("rope.freq_base_swa", header.arch("rope.freq_base", 1e4))),
            },
            "full_attention": full_rope,
        },
        num_experts=int(header.arch("expert_count")),
        top_k_experts=int(header.arch("expert_used_count")),
        moe_intermediate_size=int(header.arch("expert_feed_forward_length")),
        rms_norm_eps=float(header.arch("attention.layer_norm_rms_epsilon", 1e-6)),
        final_logit_softcapping=header.arch("final_logit_softcapping"),
        canvas_length=header.canvas_length,
        max_position_embeddings=header.context_length,
        pad_token_id=header.defaults.pad_token_id,
        eos_token_ids=(eos,) if isinstance(eos, int) else header.defaults.eos_token_ids,  # the sampler uses defaults
        bos_token_id=int(header.metadata.get("tokenizer.ggml.bos_token_id", 2)),
    )


def _weights(header: GGUFHeader) -> dict[str, np.ndarray]:
    """Every tensor the engine needs, dequantized to fp32 and shaped as the engine's parameters."""
    weights: dict[str, np.ndarray] = {}
    split: dict[str, dict[str, np.ndarray]] = {}
    for tensor in header.reader.tensors:
        if tensor.name.endswith(_SPLIT_EXPERTS):
            layer, kind = tensor.name.split(".", 2)[1], tensor.name.rsplit(".", 2)[-2]
            split.setdefault(layer, {})[kind] = _dequantize(header, tensor)
            continue
        if tensor.name == "output.weight":
            raise ConfigurationError(f"{header.path.name} has an untied output head; the torch engine ties it.")
        engine = layout.engine_name(tensor.name)
        if engine is not None:
            weights[engine] = _dequantize(header, tensor)
    for layer, parts in split.items():  # [E, I, H] gate and up -> [E, 2I, H], gate first
        weights[f"layers.{layer}.experts.gate_up_proj"] = np.concatenate(
            [parts["ffn_gate_exps"], parts["ffn_up_exps"]], axis=1
        )
    return weights


def _tensor(header: GGUFHeader, name: str) -> np.ndarray:
    """The tensor `name`, as `_dequantize` gives it."""
    for tensor in header.reader.tensors:
        if tensor.name == name:
            return _dequantize(header, tensor)
    raise ConfigurationError(f"{header.path.name} has no tensor {name!r}.")


def _dequantize(header: GGUFHeader, tensor: ReaderTensor) -> np.ndarray:
    """One tensor as fp32, numpy-shaped (ggml's dimensions reversed)."""
    shape = tuple(int(n) for n in reversed(tensor.shape))
    try:
        values = quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise ConfigurationError(
            f"{header.path.name}: gguf {_gguf_version()} cannot dequantize {tensor.tensor_type.name} ({tensor.name})."
        ) from None
    return np.asarray(values.reshape(shape), dtype=np.float32)


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")
