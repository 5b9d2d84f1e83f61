"""The checkpoint's `config.json` and `generation_config.json`, read without transformers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusiongemma_sdk import ConfigurationError, DiffusionParams, InvalidRequestError

__all__ = ["GenerationDefaults", "TextConfig"]

_SLIDING, _FULL = "sliding_attention", "full_attention"
MAX_DENOISING_STEPS = 2**31 - 1  # the temperature schedule counts steps in int32, as the reference does
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


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampler defaults from `generation_config.json`; its `max_new_tokens` is deliberately not kept."""

    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    confidence_threshold: float = 0.005
    stability_threshold: int = 1
    eos_token_ids: tuple[int, ...] = (1, 106, 50)
    pad_token_id: int = 0

    @classmethod
    def from_file(cls, path: Path, text: TextConfig) -> GenerationDefaults:
        raw: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        sampler = raw.get("sampler_config") or {}
        eos = raw.get("eos_token_id")
        base = cls(eos_token_ids=text.eos_token_ids, pad_token_id=text.pad_token_id)
        return cls(
            max_denoising_steps=int(raw.get("max_denoising_steps") or base.max_denoising_steps),
            entropy_bound=float(sampler.get("entropy_bound") or base.entropy_bound),
            t_min=float(raw["t_min"]) if raw.get("t_min") is not None else base.t_min,
            t_max=float(raw["t_max"]) if raw.get("t_max") is not None else base.t_max,
            confidence_threshold=float(raw.get("confidence_threshold") or base.confidence_threshold),
            stability_threshold=int(raw["stability_threshold"])
            if raw.get("stability_threshold") is not None
            else base.stability_threshold,
            eos_token_ids=tuple(eos if isinstance(eos, list) else [eos]) if eos is not None else base.eos_token_ids,
            pad_token_id=int(raw["pad_token_id"]) if raw.get("pad_token_id") is not None else base.pad_token_id,
        )

    def resolve(self, params: DiffusionParams | None) -> SamplerSettings:
        """These defaults overridden by whatever a request sets."""
        p = params or DiffusionParams()
        settings = SamplerSettings(
            max_denoising_steps=p.max_denoising_steps or self.max_denoising_steps,
            entropy_bound=p.entropy_bound if p.entropy_bound is not None else self.entropy_bound,
            t_min=p.t_min if p.t_min is not None else self.t_min,
            t_max=p.t_max if p.t_max is not None else self.t_max,
            confidence_threshold=p.confidence_threshold
            if p.confidence_threshold is not None
            else self.confidence_threshold,
            stability_threshold=p.stability_threshold
            if p.stability_threshold is not None
            else self.stability_threshold,
            reference=p.sampler == "reference",
        )
        if not settings.t_max > settings.t_min:
            message = f"t_max ({settings.t_max}) must be greater than t_min ({settings.t_min})"
            if p.t_min is None and p.t_max is None:
                raise ConfigurationError(f"The checkpoint's sampler defaults are inconsistent: {message}.")
            raise InvalidRequestError(f"{message}; the request set one of them, the checkpoint the other.")
        if settings.max_denoising_steps > MAX_DENOISING_STEPS:
            raise InvalidRequestError(
                f"max_denoising_steps ({settings.max_denoising_steps}) is over this engine's limit of "
                f"{MAX_DENOISING_STEPS}."
            )
        return settings


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler's settings for one request."""

    max_denoising_steps: int
    entropy_bound: float
    t_min: float
    t_max: float
    confidence_threshold: float
    stability_threshold: int
    reference: bool = False
    banned_token_ids: tuple[int, ...] = ()  # never sampled nor committed (tool_choice="none" bans the call marker)


def canvases_for(max_tokens: int, canvas_length: int) -> int:
    """Whole canvases needed for `max_tokens` new tokens."""
    return math.ceil(max_tokens / canvas_length)


def token_budget(prompt_tokens: int, requested: int | None, default: int, config: TextConfig) -> int:
    """The new tokens a request may have: its `max_tokens` (else `default`) within the model's context window.

    Whole canvases must fit after the prompt. A `max_tokens` the request set and that does not fit is an error; the
    default shrinks to what fits.
    """
    canvas, context = config.canvas_length, config.max_position_embeddings
    room = (context - prompt_tokens) // canvas * canvas
    if room <= 0:
        raise InvalidRequestError(
            f"The prompt is {prompt_tokens} tokens: with one {canvas}-token canvas it exceeds the model's context of "
            f"{context} tokens. Shorten the conversation."
        )
    if requested is None:
        return min(default, room)
    if canvases_for(requested, canvas) * canvas > room:
        raise InvalidRequestError(
            f"max_tokens={requested} does not fit: the prompt takes {prompt_tokens} of the model's {context} context "
            f"tokens, which leaves room for {room} new tokens in whole {canvas}-token canvases. Lower max_tokens to "
            f"at most {room}."
        )
    return requested
