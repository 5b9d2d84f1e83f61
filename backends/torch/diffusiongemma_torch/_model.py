"""DiffusionGemma's text network: one weight set, run causally to fill the KV cache and bidirectionally to denoise.

Follows transformers' `diffusion_gemma` maths (see shared reference notes): RMSNorm computed in fp32 with `weight`
(not `1 + weight`), attention with QK-norm and scaling 1.0, K = V on full-attention layers (V taken before `k_norm`
and RoPE, then a scale-free norm), proportional RoPE on full layers, a dense MLP beside a top-k MoE, a per-layer
scalar (separate buffers for the encoder and the decoder), self-conditioning kept at hidden size, and a final logit
softcap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from diffusiongemma_torch._config import TextConfig

__all__ = ["DiffusionGemmaTextNet", "KVCache"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm in fp32, scaled by `weight` when given, returned in the input's dtype."""
    xf = x.float()
    normed = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if weight is not None:
        normed = normed * weight.float()
    return normed.type_as(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Norm(nn.Module):
    """An RMSNorm weight (named like the checkpoint's `*.weight`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class Attention(nn.Module):
    def __init__(self, config: TextConfig, index: int) -> None:
        super().__init__()
        hidden, heads = config.hidden_size, config.num_heads
        self.head_dim = config.head_dims[index]
        self.kv_heads = config.kv_heads[index]
        self.groups = heads // self.kv_heads
        self.sliding = config.sliding[index]
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False) if self.sliding else None
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)
        self.q_norm = Norm(self.head_dim)
        self.k_norm = Norm(self.head_dim)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, shaped [batch, heads, tokens, head_dim]."""
        shape = (*x.shape[:-1], -1, self.head_dim)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        q = rms_norm(self.q_proj(x).view(shape), self.q_norm.weight, eps)
        q = (q * cos + rotate_half(q) * sin).transpose(1, 2)
        k = self.k_proj(x).view(shape)
        v = self.v_proj(x).view(shape) if self.v_proj is not None else k  # K = V on full layers
        k = rms_norm(k, self.k_norm.weight, eps)
        k = (k * cos + rotate_half(k) * sin).transpose(1, 2)
        v = rms_norm(v, None, eps).transpose(1, 2)
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *, causal: bool
    ) -> torch.Tensor:
        """Scaled dot-product attention with scale 1.0 over the keys and values as the cache holds them; the heads'
        outputs, [batch, heads, tokens, head_dim].

        Grouped query heads: SDPA's own GQA where it takes them (no mask, head dim up to 256). A canvas against the
        cache otherwise (one mask row for every query, or none) stacks each group's query heads as more queries of
        their key head, so a denoising step never copies the keys; the encoder's passes (a mask per query, once per
        prefill chunk or committed canvas) expand the keys per query head, as transformers does.
        """
        causal = causal and mask is None and q.shape[2] > 1
        if self.groups == 1 or (mask is None and self.head_dim <= 256):
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, scale=1.0, enable_gqa=self.groups > 1
            )
        elif not causal and (mask is None or mask.shape[2] == 1):
            batch, heads, queries, dim = q.shape
            stacked = q.reshape(batch, self.kv_heads, self.groups * queries, dim)
            out = F.scaled_dot_product_attention(stacked, k, v, attn_mask=mask, scale=1.0)
            out = out.reshape(batch, heads, queries, dim)
        else:
            k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=1.0)
        return out

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """The heads' outputs [batch, heads, tokens, head_dim] projected back to hidden size."""
        projected: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1))
        return projected


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down_proj(gelu_tanh(self.gate_proj(x)) * self.up_proj(x))
        return out


class SelfConditioning(MLP):
    """The decoder-only MLP that turns the previous step's soft embedding into a signal for the canvas."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__(hidden, intermediate)
        self.pre_norm = Norm(hidden)


class Router(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(config.hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(config.num_experts))
        self.top_k = config.top_k_experts
        self.eps = config.rms_norm_eps
        self.root_size = config.hidden_size**-0.5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.proj(rms_norm(x, None, self.eps) * self.scale * self.root_size)
        probabilities = F.softmax(scores, dim=-1, dtype=torch.float32)
        weights, index = torch.topk(probabilities, k=self.top_k, dim=-1)
        weights /= weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[index], index


class Experts(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        e, h, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))

    def forward(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Each token through its top-k experts: rows grouped by expert, two grouped matmuls, weighted sum."""
        tokens, top_k = index.shape
        experts = self.gate_up_proj.shape[0]
        expert_ids, order = torch.sort(index.reshape(-1))
        counts = torch.histc(
            expert_ids.float() if x.device.type in ("cpu", "mps") else expert_ids.int(), experts, 0, experts - 1
        )
        offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
        hidden = _grouped_linear(x[order // top_k], self.gate_up_proj, offsets)
        gate, up = hidden.chunk(2, dim=-1)
        hidden = _grouped_linear(gelu_tanh(gate) * up, self.down_proj, offsets)
        hidden = hidden * weights.reshape(-1)[order].unsqueeze(-1)
        restore = torch.empty_like(order)
        restore[order] = torch.arange(order.numel(), device=order.device)
        return hidden[restore].view(tokens, top_k, -1).sum(dim=1).to(x.dtype)


def _grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows of `x`, sorted by expert, each times its expert's weight [E, out, in]."""
    if hasattr(F, "grouped_mm"):
        return F.grouped_mm(x.to(weight.dtype), weight.transpose(-2, -1), offs=offsets)
    out = x.new_empty(x.shape[0], weight.shape[1])  # older torch: one matmul per expert
    start = 0
    for expert, end in enumerate(offsets.tolist()):
        if end > start:
            out[start:end] = F.linear(x[start:end], weight[expert])
        start = end
    return out


class Layer(nn.Module):
    def __init__(self, config: TextConfig, index: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.self_attn = Attention(config, index)
        self.mlp = MLP(hidden, config.intermediate_size)
        self.router = Router(config)
        self.experts = Experts(config)
        self.input_layernorm = Norm(hidden)
        self.post_attention_layernorm = Norm(hidden)
        self.pre_feedforward_layernorm = Norm(hidden)
        self.post_feedforward_layernorm = Norm(hidden)
        self.post_feedforward_layernorm_1 = Norm(hidden)
        self.post_feedforward_layernorm_2 = Norm(hidden)
        self.pre_feedforward_layernorm_2 = Norm(hidden)
        self.layer_scalar = nn.Parameter(torch.ones(1), requires_grad=False)  # the decoder's
        self.encoder_layer_scalar = nn.Parameter(torch.ones(1), requires_grad=False)

    def feed_forward(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        dense = rms_norm(
            self.mlp(rms_norm(x, self.pre_feedforward_layernorm.weight, eps)),
            self.post_feedforward_layernorm_1.weight,
            eps,
        )
        flat = x.reshape(-1, x.shape[-1])
        weights, index = self.router(flat)
        experts = self.experts(rms_norm(flat, self.pre_feedforward_layernorm_2.weight, eps), index, weights)
        experts = rms_norm(experts.reshape(x.shape), self.post_feedforward_layernorm_2.weight, eps)
        return x + rms_norm(dense + experts, self.post_feedforward_layernorm.weight, eps)


class KVCache:
    """Keys and values the encoder wrote, per layer, in buffers allocated once; nothing is copied per step.

    A full-attention layer's buffer holds `capacity` positions. A sliding layer's holds its window (the last
    `sliding_window - 1` positions) followed by `room` positions for the new tokens of one pass. A pass writes its
    keys and values in place right after what a layer holds and attends over a view of the buffer, in position order
    (as transformers' cache does, so the arithmetic is the same): the encoder's pass then keeps them (a sliding layer
    moves its window back to the front, once per pass), a canvas being denoised is only written into that slot,
    overwritten by the next step and in the end by the committed canvas.

    `valid[b, p]` says whether absolute position `p` of row `b` is a real token (False for left padding).
    """

    def __init__(self, config: TextConfig, keys: list[torch.Tensor], values: list[torch.Tensor], capacity: int) -> None:
        self.window = config.sliding_window
        self.sliding = config.sliding
        self.capacity = capacity
        self.keys, self.values = keys, values
        self.length = 0
        self.valid = torch.ones(keys[0].shape[0], 0, dtype=torch.bool, device=keys[0].device)

    @classmethod
    def allocate(
        cls, config: TextConfig, batch: int, device: torch.device, dtype: torch.dtype, capacity: int, room: int
    ) -> KVCache:
        """A cache of its own, for `batch` rows."""
        keys, values = _buffers(config, batch, device, dtype, capacity, room)
        return cls(config, keys, values, capacity)

    def rebind(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Hold the same positions in other buffers (a slab that grew, or another slot of it), copied there."""
        self.keys, self.values = keys, values

    def held(self, sliding: bool) -> int:
        """How many positions a layer of this kind holds (the last ones)."""
        return min(self.length, self.window - 1) if sliding else self.length

    def retained_start(self, sliding: bool) -> int:
        """The first absolute position still held by a layer of this kind."""
        return self.length - self.held(sliding)

    def attended(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys and values after what `layer` holds; return views of everything they attend over."""
        start = self.held(self.sliding[layer])
        end = start + k.shape[-2]
        if end > self.keys[layer].shape[-2]:
            raise ValueError(f"{end} positions do not fit layer {layer}'s cache of {self.keys[layer].shape[-2]}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def keep(self, new: int) -> None:
        """After an encoder pass wrote `new` positions: count them, and move each sliding window to the front."""
        for layer, sliding in enumerate(self.sliding):
            total = self.held(sliding) + new
            kept = min(total, self.window - 1) if sliding else total
            if kept < total:
                for buffer in (self.keys[layer], self.values[layer]):
                    buffer[:, :, :kept] = buffer[:, :, total - kept : total].clone()
        self.length += new


def _buffers(
    config: TextConfig, slots: int, device: torch.device, dtype: torch.dtype, capacity: int, room: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys and values buffers per layer: `capacity` positions on full layers, window and room on sliding ones.

    Zeroed: a pass over rows of other lengths reads past a row's end under a mask, which weighs those values 0, and
    0 times whatever was left in fresh memory (a NaN) would not be 0."""
    sizes = [config.sliding_window - 1 + room if sliding else capacity for sliding in config.sliding]
    layers = zip(config.kv_heads, sizes, config.head_dims, strict=True)
    shapes = [(slots, heads, size, dim) for heads, size, dim in layers]
    return (
        [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes],
        [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes],
    )


class CacheSlab:
    """The KV caches of rows generated together, in shared buffers: slot `i` of each layer's
    [slots, kv_heads, size, head_dim] buffer is row `i`'s cache (`cache(i)` views it, copying nothing), so that
    `denoise_rows` attends over all of them in one pass per layer. Rows keep slots 0 to n - 1 (`move` fills a hole)."""

    def __init__(
        self, config: TextConfig, device: torch.device, dtype: torch.dtype, slots: int, capacity: int, room: int
    ) -> None:
        self.config, self.device, self.dtype = config, device, dtype
        self.slots, self.capacity, self.room = slots, capacity, room
        self.keys, self.values = _buffers(config, slots, device, dtype, capacity, room)

    def cache(self, slot: int) -> KVCache:
        """A fresh cache viewing slot `slot`."""
        keys, values = self.views(slot)
        return KVCache(self.config, keys, values, self.capacity)

    def views(self, slot: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [k[slot : slot + 1] for k in self.keys], [v[slot : slot + 1] for v in self.values]

    def grown(self, slots: int, capacity: int) -> CacheSlab:
        """A larger slab holding what this one holds (slot for slot)."""
        bigger = CacheSlab(self.config, self.device, self.dtype, slots, capacity, self.room)
        for old, new in zip([*self.keys, *self.values], [*bigger.keys, *bigger.values], strict=True):
            new[: old.shape[0], :, : old.shape[2]] = old
        return bigger

    def move(self, source: int, target: int) -> None:
        """Copy slot `source` into slot `target` (once, when the row in `target` has left)."""
        for buffer in (*self.keys, *self.values):
            buffer[target] = buffer[source]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class DiffusionGemmaTextNet(nn.Module):
    """The text network. Parameter names match the checkpoint's `model.decoder.*` keys."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_layers))
        self.norm = Norm(hidden)
        self.self_conditioning = SelfConditioning(hidden, config.intermediate_size)
        for layer_type in set(config.layer_types):
            self.register_buffer(f"{layer_type}_inv_freq", config.rope_inv_freq(layer_type), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def new_cache(self, batch: int, capacity: int, room: int | None = None) -> KVCache:
        """A cache for `capacity` positions of context (prompt and every canvas), taking at most `room` new tokens
        a pass (default: `capacity`)."""
        weight = self.embed_tokens.weight
        room = max(self.config.canvas_length, capacity if room is None else room)
        return KVCache.allocate(self.config, batch, weight.device, weight.dtype, capacity, room)

    def encode(
        self, ids: torch.Tensor, cache: KVCache, valid: torch.Tensor | None = None, *, logits: bool = False
    ) -> torch.Tensor | None:
        """Run causally over `ids` (prompt or committed canvas), writing their keys and values.

        Returns the logits only when asked (the sampler never needs them).
        """
        length = ids.shape[1]
        positions = torch.arange(cache.length, cache.length + length, device=ids.device)
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid
        all_valid = torch.cat([cache.valid, valid], dim=1)
        masks = {sliding: self._causal_mask(cache, positions, all_valid, sliding) for sliding in (False, True)}
        x = self._layers(self._embed(ids), positions, _in_cache(cache, masks, causal=True), encoder=True)
        cache.keep(length)
        cache.valid = all_valid
        return self.logits(x) if logits else None

    def denoise(
        self, canvas: torch.Tensor, cache: KVCache, soft: torch.Tensor | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run bidirectionally over a canvas against the cache (never written). Returns fp32 logits (in `out` when
        given: see `logits`).

        `soft` is the self-conditioning signal at hidden size (`soft_embedding` of the previous step's logits).
        """
        positions = torch.arange(cache.length, cache.length + canvas.shape[1], device=canvas.device)
        masks = {sliding: self._canvas_mask(cache, canvas.shape[1], sliding) for sliding in (False, True)}
        attention = _in_cache(cache, masks, causal=False)
        return self.logits(self._layers(self._canvas_input(canvas, soft), positions, attention, encoder=False), out)

    def denoise_rows(
        self, canvas: torch.Tensor, slab: CacheSlab, caches: Sequence[KVCache], soft: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Denoise the canvases of rows whose caches are slots 0 to n - 1 of `slab` (any lengths: a ragged batch), in
        one pass.

        Row `i` of `canvas` ([rows, canvas_length]) is at the positions after `caches[i]` and attends over that cache
        alone (a mask hides what lies past its canvas), in place. Returns the final hidden states
        ([rows, canvas_length, hidden]): `logits` turns them into logits, some rows at a time, so the
        vocabulary-sized work need not be held for every row at once.
        """
        width = canvas.shape[1]
        lengths = torch.tensor([c.length for c in caches], device=canvas.device)
        positions = lengths[:, None] + torch.arange(width, device=canvas.device)
        attention = _in_slab(slab, caches, width)
        return self._layers(self._canvas_input(canvas, soft), positions, attention, encoder=False)

    def encode_fresh_rows(
        self,
        ids: torch.Tensor,
        lengths: Sequence[int],
        slab: CacheSlab,
        slots: Sequence[int],
        caches: Sequence[KVCache],
    ) -> None:
        """Prefill prompts into empty slots of `slab` in one causal pass. Row `i` of `ids` ([rows, width],
        right-padded) is a prompt of `lengths[i]` tokens for `caches[i]`, which views slot `slots[i]`. A token never
        attends to the padding after it, so each row is its prompt encoded alone, up to batched rounding."""
        width, device = ids.shape[1], ids.device
        positions = torch.arange(width, device=device)
        masks = {
            sliding: _causal_window_mask(positions, self.config.sliding_window, sliding) for sliding in (False, True)
        }
        attention = _into_slots(slab, torch.tensor(list(slots), device=device), width, masks)
        self._layers(self._embed(ids), positions, attention, encoder=True)
        for cache, length in zip(caches, lengths, strict=True):
            cache.keep(length)
            cache.valid = torch.ones(1, length, dtype=torch.bool, device=device)

    def _canvas_input(self, canvas: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        """The embedded canvas, conditioned on the previous step's soft tokens (none at a canvas's first step)."""
        eps = self.config.rms_norm_eps
        x = self._embed(canvas)
        if soft is None:
            soft = torch.zeros_like(x)
        sc = self.self_conditioning
        return rms_norm(x + sc(rms_norm(soft, sc.pre_norm.weight, eps)), None, eps)

    def _layers(
        self, x: torch.Tensor, positions: torch.Tensor, attention: AttentionOver, *, encoder: bool
    ) -> torch.Tensor:
        """The shared body; `attention` writes a layer's new keys and values and attends over what they see."""
        eps = self.config.rms_norm_eps
        rope = self._rope(positions, x.dtype)
        for index, layer in enumerate(cast("Iterable[Layer]", self.layers)):
            module = layer.self_attn
            cos, sin = rope[self.config.layer_types[index]]
            q, k, v = module.project(rms_norm(x, layer.input_layernorm.weight, eps), cos, sin, eps)
            out = module.output(attention(index, module, q, k, v))
            x = x + rms_norm(out, layer.post_attention_layernorm.weight, eps)
            x = layer.feed_forward(x, eps) * (layer.encoder_layer_scalar if encoder else layer.layer_scalar)
        return x

    def soft_embedding(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Self-conditioning signal from a step's fp32 probabilities: `probs @ E * sqrt(hidden)`, at hidden size."""
        weight = self.embed_tokens.weight
        return torch.matmul(probabilities.to(weight.dtype), weight) * self._embed_scale()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed_tokens.weight) * self._embed_scale()

    def _embed_scale(self) -> torch.Tensor:
        """sqrt(hidden) as an fp32 scalar cast to the weights' dtype (53.0 in bf16 for the real model)."""
        weight = self.embed_tokens.weight
        return torch.tensor(self.config.hidden_size**0.5, device=weight.device).to(weight.dtype)

    def logits(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits (softcapped) of final hidden states, written into `out` when given (fp32, of their shape)."""
        x = rms_norm(x, self.norm.weight, self.config.rms_norm_eps)
        weight = self.embed_tokens.weight
        if out is None:
            logits = F.linear(x, weight).float()
        elif x.dtype == torch.float32:
            logits = torch.matmul(x, weight.t(), out=out)  # what F.linear computes, bit for bit
        else:
            logits = out.copy_(F.linear(x, weight))
        cap = self.config.final_logit_softcapping
        return logits if cap is None else logits.div_(cap).tanh_().mul_(cap)  # tanh(logits / cap) * cap, in place

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """cos and sin per layer type, [1 or rows, tokens, head_dim], for positions [tokens] or [rows, tokens]."""
        tables = {}
        rows = positions if positions.dim() == 2 else positions[None]
        for layer_type in set(self.config.layer_types):
            inv_freq: torch.Tensor = getattr(self, f"{layer_type}_inv_freq")
            freqs = rows[:, :, None].float() * inv_freq.float()
            emb = torch.cat((freqs, freqs), dim=-1)
            tables[layer_type] = (emb.cos().to(dtype), emb.sin().to(dtype))
        return tables

    def _causal_mask(self, cache: KVCache, positions: torch.Tensor, valid: torch.Tensor, sliding: bool) -> torch.Tensor:
        """[batch, 1, new, keys] boolean: causal, within the window on sliding layers, no padded keys."""
        start = cache.retained_start(sliding)
        keys = torch.arange(start, int(positions[-1]) + 1, device=positions.device)
        allowed = keys[None, :] <= positions[:, None]
        if sliding:
            allowed &= keys[None, :] > positions[:, None] - self.config.sliding_window
        allowed = allowed[None] & valid[:, None, start:]
        allowed |= keys[None, None, :] == positions[None, :, None]  # a padded query attends to itself only
        return allowed[:, None]

    def _canvas_mask(self, cache: KVCache, canvas_length: int, sliding: bool) -> torch.Tensor | None:
        """None without padding; else [batch, 1, 1, keys] hiding padded cache entries."""
        if bool(cache.valid.all()):
            return None
        held = cache.valid[:, cache.retained_start(sliding) :]
        canvas = torch.ones(held.shape[0], canvas_length, dtype=torch.bool, device=held.device)
        return torch.cat([held, canvas], dim=1)[:, None, None, :]


AttentionOver = Callable[[int, Attention, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""Writes layer `index`'s new keys and values where they belong and returns the heads' attention outputs."""


def _in_cache(cache: KVCache, masks: Mapping[bool, torch.Tensor | None], *, causal: bool) -> AttentionOver:
    """Attention of a batch that shares one cache (rows aligned, left padding masked)."""

    def attend(index: int, module: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values = cache.attended(index, k, v)
        return module.attend(q, keys, values, masks[module.sliding], causal=causal)

    return attend


def _causal_window_mask(positions: torch.Tensor, window: int, sliding: bool) -> torch.Tensor:
    """[1, 1, tokens, tokens] boolean: causal over `positions` (from 0), within the window on sliding layers."""
    allowed = positions[None, :] <= positions[:, None]
    if sliding:
        allowed &= positions[None, :] > positions[:, None] - window
    return allowed[None, None]


def _into_slots(slab: CacheSlab, slots: torch.Tensor, width: int, masks: Mapping[bool, torch.Tensor]) -> AttentionOver:
    """Causal attention of prompts over themselves, their keys and values written at the start of their slots."""

    def attend(index: int, module: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        slab.keys[index][slots, :, :width] = k
        slab.values[index][slots, :, :width] = v
        return module.attend(q, k, v, masks[module.sliding], causal=True)

    return attend


def _in_slab(slab: CacheSlab, caches: Sequence[KVCache], width: int) -> AttentionOver:
    """Attention of rows whose caches are slab slots 0 to n - 1: each row's canvas is written after its own cache,
    then one pass attends over the slots, a mask hiding what lies past each row's canvas."""
    rows, device = len(caches), slab.device
    offsets = torch.arange(width, device=device)
    layout: dict[bool, tuple[torch.Tensor, int, torch.Tensor | None]] = {}
    for sliding in (False, True):
        starts = torch.tensor([c.held(sliding) for c in caches], device=device)
        ends = starts + width
        end = int(ends.max())
        same = bool((ends == end).all())
        mask = None if same else (torch.arange(end, device=device)[None, :] < ends[:, None])[:, None, None, :]
        layout[sliding] = (starts[:, None] + offsets, end, mask)
    row_index = torch.arange(rows, device=device)[:, None].expand(rows, width)

    def attend(index: int, module: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        positions, end, mask = layout[module.sliding]
        keys, values = slab.keys[index], slab.values[index]
        if end > keys.shape[2]:
            raise ValueError(f"{end} positions do not fit layer {index}'s slab of {keys.shape[2]}")
        keys.transpose(1, 2)[row_index, positions] = k.transpose(1, 2)
        values.transpose(1, 2)[row_index, positions] = v.transpose(1, 2)
        return module.attend(q, keys[:rows, :, :end], values[:rows, :, :end], mask, causal=False)

    return attend
