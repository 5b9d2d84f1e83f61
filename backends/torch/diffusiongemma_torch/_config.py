"""The checkpoint's `config.json`, read without transformers (its `generation_config.json` is the core's
`GenerationDefaults`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusiongemma_sdk import ConfigurationError

__all__ = ["TextConfig"]

_SLIDING, _FULL = "sliding_attention", "full_attention"
_DEFAULT_ROPE = {
    _SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
    _FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}


@dataclass(frozen=True)
class TextConfig:
    """What the text path of DiffusionGemma needs to know about the network."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_types: tuple[str, ...]
    head_dims: tuple[int, ...]
    kv_heads: tuple[int, ...]
    sliding_window: int
    rope: dict[str, dict[str, Any]]
    num_experts: int
    top_k_experts: int
    moe_intermediate_size: int
    rms_norm_eps: float
    final_logit_softcapping: float | None
    canvas_length: int
    max_position_embeddings: int
    pad_token_id: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int

    @classmethod
    def from_file(cls, path: Path) -> TextConfig:
        """Read `config.json` (the multimodal wrapper or a bare text config)."""
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TextConfig:
        text = raw.get("text_config", raw)
        if text.get("use_bidirectional_attention") == "all":
            raise ConfigurationError("Checkpoints with use_bidirectional_attention='all' are not supported.")
        if not text.get("num_experts"):
            raise ConfigurationError("This engine runs the MoE DiffusionGemma; the checkpoint has no experts.")
        num_layers = int(text["num_hidden_layers"])
        layer_types = list(
            text.get("layer_types") or [_FULL if (i + 1) % 6 == 0 else _SLIDING for i in range(num_layers)]
        )
        layer_types[-1] = _FULL  # as the reference config forces
        head_dims, kv_heads = _per_layer_shapes(text, layer_types)
        eos = text.get("eos_token_id", 1)
        return cls(
            vocab_size=int(text["vocab_size"]),
            hidden_size=int(text["hidden_size"]),
            intermediate_size=int(text["intermediate_size"]),
            num_layers=num_layers,
            num_heads=int(text["num_attention_heads"]),
            layer_types=tuple(layer_types),
            head_dims=head_dims,
            kv_heads=kv_heads,
            sliding_window=int(text.get("sliding_window", 512)),
            rope={**_DEFAULT_ROPE, **(text.get("rope_parameters") or {})},
            num_experts=int(text["num_experts"]),
            top_k_experts=int(text["top_k_experts"]),
            moe_intermediate_size=int(text["moe_intermediate_size"]),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            final_logit_softcapping=text.get("final_logit_softcapping", 30.0),
            canvas_length=int(raw.get("canvas_length", 256)),
            max_position_embeddings=int(text.get("max_position_embeddings", 131_072)),
            pad_token_id=int(text.get("pad_token_id", 0)),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [eos]),
            bos_token_id=int(text.get("bos_token_id", 2)),
        )

    @property
    def sliding(self) -> tuple[bool, ...]:
        """Per layer, whether it is a sliding-window layer."""
        return tuple(kind == _SLIDING for kind in self.layer_types)

    def rope_inv_freq(self, layer_type: str) -> torch.Tensor:
        """Inverse RoPE frequencies for a layer type, computed as the reference does (proportional on full layers)."""
        params = self.rope[layer_type]
        head_dim = self.head_dims[self.layer_types.index(layer_type)]
        base = float(params["rope_theta"])
        factor = float(params.get("partial_rotary_factor", 1.0))
        kind = params.get("rope_type", "default")
        if kind == "proportional":
            angles = int(factor * head_dim // 2)
            exponents = torch.arange(0, 2 * angles, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim
            rotated = 1.0 / (base**exponents)
            return torch.cat((rotated, torch.zeros(head_dim // 2 - angles, dtype=torch.float32)))
        if kind != "default":
            raise ConfigurationError(f"RoPE type {kind!r} is not supported.")
        dim = int(head_dim * factor)
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))


def _per_layer_shapes(text: dict[str, Any], layer_types: list[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Head size and KV heads per layer: `per_layer_config` as saved by transformers, else the `global_*` keys."""
    head_dim = int(text.get("head_dim", 256))
    kv = int(text.get("num_key_value_heads", 4))
    overrides: dict[int, dict[str, Any]] = {int(k): v for k, v in (text.get("per_layer_config") or {}).items()}
    if not overrides:
        full = {"head_dim": int(text.get("global_head_dim", 512))}
        if text.get("num_global_key_value_heads") is not None:
            full["num_key_value_heads"] = int(text["num_global_key_value_heads"])
        overrides = {i: full for i, kind in enumerate(layer_types) if kind == _FULL}
    head_dims = tuple(int(overrides.get(i, {}).get("head_dim", head_dim)) for i in range(len(layer_types)))
    kv_heads = tuple(int(overrides.get(i, {}).get("num_key_value_heads", kv)) for i in range(len(layer_types)))
    return head_dims, kv_heads
