"""Tiny random DiffusionGemma checkpoints, built with transformers' own config and model classes.

Each is saved with `save_pretrained` (the published layout), with a small word-level tokenizer that holds the Gemma 4
special tokens and a chat template in Gemma 4's turn format, so the engine's loader, chat rendering and parsers take
the path they take with the real checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>",
    "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", "<|tool>", "<tool|>", '<|"|>',
]  # fmt: skip
WORDS = ["user", "model", "system", "thought", "call", ":", "{", "}", ",", "Sort", "these", "numbers", "Reverse",
         "words", "What", "is", "+", "?", "add", "a", "b", "red", "green", "blue", "response", "value", "declaration",
         "\n"] + [str(n) for n in range(100)]  # fmt: skip

CHAT_TEMPLATE = """{{ bos_token }}
{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' -%}
{%- if enable_thinking or tools or system -%}
<|turn>system
{% if enable_thinking %}<|think|>
{% endif %}{{ system }}
{%- for tool in tools or [] -%}
<|tool>declaration:{{ tool['function']['name'] }}{{ tool['function']['parameters'] | tojson }}<tool|>
{%- endfor -%}
<turn|>
{% endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'user' -%}
<|turn>user
{{ message['content'] }}<turn|>
{% elif message['role'] == 'assistant' -%}
<|turn>model
{{ message['content'] }}
{%- for call in message.get('tool_calls') or [] -%}
<|tool_call>call:{{ call['function']['name'] }}{{ call['function']['arguments'] | tojson }}<tool_call|>
{%- endfor -%}
{%- if not message.get('tool_calls') %}<turn|>
{% endif -%}
{%- elif message['role'] == 'tool' -%}
<|tool_response>response:{{ message['name'] }}{value:<|"|>{{ message['content'] }}<|"|>}<tool_response|>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and (not messages or messages[-1]['role'] != 'tool') -%}
<|turn>model
{% endif -%}"""


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny model."""

    vocab: int = 256
    hidden: int = 64
    layers: tuple[str, ...] = ("sliding_attention", "full_attention")
    sliding_window: int = 8
    canvas: int = 16
    experts: int = 4
    top_k: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    global_head_dim: int = 32
    global_kv_heads: int = 1
    context: int = 8192
    intermediate: int | None = None  # the dense MLP's width; default 2 x hidden
    moe_intermediate: int | None = None  # each expert's width; default hidden / 2
    tokenizer: Literal["words", "demo"] = "words"  # "demo": the demo model's byte-level BPE (vocab >= 930)


def build_tiny_checkpoint(directory: Path, spec: TinySpec = TinySpec(), seed: int = 0) -> Path:
    """Save a random tiny model (norms, router scales and layer scalars randomised too) with tokenizer and template."""
    from transformers import (
        DiffusionGemmaConfig,
        DiffusionGemmaForBlockDiffusion,
        DiffusionGemmaTextConfig,
        Gemma4VisionConfig,
    )

    torch.manual_seed(seed)
    text = DiffusionGemmaTextConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate or 2 * spec.hidden,
        moe_intermediate_size=spec.moe_intermediate or spec.hidden // 2, num_experts=spec.experts,
        top_k_experts=spec.top_k,
        num_hidden_layers=len(spec.layers), layer_types=list(spec.layers), num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim, global_head_dim=spec.global_head_dim,
        num_global_key_value_heads=spec.global_kv_heads, sliding_window=spec.sliding_window,
        max_position_embeddings=spec.context, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    vision = Gemma4VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16,
    )  # fmt: skip
    config = DiffusionGemmaConfig(
        text_config=text, vision_config=vision, canvas_length=spec.canvas, image_token_id=spec.vocab - 1,
        boi_token_id=spec.vocab - 2, eoi_token_id=spec.vocab - 3,
    )  # fmt: skip
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1 and "vision" not in name:
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
        for name, buffer in model.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.copy_(0.5 + torch.rand_like(buffer))
    model.save_pretrained(directory)
    if spec.tokenizer == "demo":
        _copy_demo_tokenizer(directory)
    else:
        _write_tokenizer(directory, spec.vocab)
    _write_generation_config(directory)
    return directory


def stop_token_ids(directory: Path) -> list[int]:
    """The ids of <eos>, <turn|> and <|tool_response>, the real checkpoint's stop tokens."""
    vocab = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    return [vocab["<eos>"], vocab["<turn|>"], vocab["<|tool_response>"]]


def _write_tokenizer(directory: Path, vocab_size: int) -> None:
    tokens = SPECIAL_TOKENS + WORDS
    assert len(tokens) <= vocab_size
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})
    )


def _copy_demo_tokenizer(directory: Path) -> None:
    """The demo model's tokenizer and chat template: a byte-level BPE, which GGUF (llama.cpp's gpt2) can hold."""
    from diffusiongemma_torch.demo import DEMO_DIR

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(DEMO_DIR / name, directory / name)


def _write_generation_config(directory: Path) -> None:
    (directory / "generation_config.json").write_text(
        json.dumps(
            {
                "confidence_threshold": 0.005,
                "eos_token_id": stop_token_ids(directory),
                "max_denoising_steps": 8,
                "max_new_tokens": 16,
                "pad_token_id": 0,
                "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
                "stability_threshold": 1,
                "t_max": 0.8,
                "t_min": 0.4,
            }
        )
    )
