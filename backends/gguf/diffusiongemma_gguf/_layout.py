"""The `diffusion-gemma` GGUF layout of llama.cpp PR #24423: the architecture name, the metadata keys, and the
tensor names, mapped to and from the torch engine's parameter names (shared/reference/gguf-llamacpp.md §2)."""

from __future__ import annotations

import re

__all__ = [
    "ARCH",
    "CANVAS_LENGTH",
    "EB_KEYS",
    "ROPE_FREQS",
    "engine_name",
    "gguf_name",
]

ARCH = "diffusion-gemma"
CANVAS_LENGTH = "diffusion.canvas_length"
EB_KEYS = {  # the sampler defaults, by GenerationDefaults field (optional: the runtime falls back to its own)
    "max_denoising_steps": "diffusion.eb_max_steps",
    "t_min": "diffusion.eb_t_min",
    "t_max": "diffusion.eb_t_max",
    "entropy_bound": "diffusion.eb_entropy_bound",
    "stability_threshold": "diffusion.eb_stability_threshold",
    "confidence_threshold": "diffusion.eb_confidence_threshold",
}
ROPE_FREQS = "rope_freqs.weight"
"""Per-frequency divisors of the full-attention layers' RoPE (1e30 stops a frequency: "proportional" RoPE)."""

_GLOBAL = {
    "embed_tokens.weight": "token_embd.weight",  # the LM head is tied to it
    "norm.weight": "output_norm.weight",
    "self_conditioning.pre_norm.weight": "self_cond_pre_norm.weight",
    "self_conditioning.gate_proj.weight": "self_cond_gate.weight",
    "self_conditioning.up_proj.weight": "self_cond_up.weight",
    "self_conditioning.down_proj.weight": "self_cond_down.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",  # sliding layers only: full layers take V = K
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
    "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
    "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
    "router.proj.weight": "ffn_gate_inp.weight",
    "router.scale": "ffn_gate_inp.scale",
    "router.per_expert_scale": "ffn_down_exps.scale",
    "experts.gate_up_proj": "ffn_gate_up_exps.weight",
    "experts.down_proj": "ffn_down_exps.weight",
    "layer_scalar": "layer_output_scale.weight",  # the decoder's (canvas rows)
    "encoder_layer_scalar": "enc_layer_output_scale.weight",  # the encoder's (prompt rows)
}
_GLOBAL_BACK = {gguf: engine for engine, gguf in _GLOBAL.items()}
_LAYER_BACK = {gguf: engine for engine, gguf in _LAYER.items()}
_ENGINE_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(.+)")


def gguf_name(name: str) -> str:
    """The GGUF tensor name of an engine parameter (`layers.3.router.scale` -> `blk.3.ffn_gate_inp.scale`)."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    match = _ENGINE_LAYER.fullmatch(name)
    if match is None or match[2] not in _LAYER:
        raise KeyError(f"no diffusion-gemma tensor for the engine parameter {name!r}")
    return f"blk.{match[1]}.{_LAYER[match[2]]}"


def engine_name(name: str) -> str | None:
    """The engine parameter a GGUF tensor holds; None for tensors the engine derives itself (`rope_freqs`)."""
    if name in _GLOBAL_BACK:
        return _GLOBAL_BACK[name]
    match = _GGUF_LAYER.fullmatch(name)
    if match is not None and match[2] in _LAYER_BACK:
        return f"layers.{match[1]}.{_LAYER_BACK[match[2]]}"
    if name == ROPE_FREQS:
        return None
    raise KeyError(f"{name!r} is not a tensor of the diffusion-gemma layout")
