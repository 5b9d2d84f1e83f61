"""Train the bundled demo model: a small DiffusionGemma taught the demo tasks with the uniform-state objective.

    python -m training.train_demo_model            # writes backends/torch/diffusiongemma_torch/demo/

Seeded and deterministic on CPU for a given thread count (the last bits of a step differ between 1 and 2 threads).
The model is built from transformers' own DiffusionGemma config and model classes and saved with `save_pretrained`,
so it has the real checkpoint's layout.
Objective (shared/reference/diffusiongemma-model.md, appendix): one noise level t ~ U(0.001, 0.999) per example, each
canvas position replaced by a uniformly random token with probability t, self-conditioning on half of the examples
from a no-gradient first pass, cross-entropy against the clean canvas over every position (padding included).
Curriculum: the first steps are dense copy exercises only (`demo_examples.copy_example`), then 10% of the examples.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    DiffusionGemmaTextConfig,
    DynamicCache,
    Gemma4VisionConfig,
)

from diffusiongemma_sdk._local.chat import ChatTemplate
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch.demo import DEMO_DIR
from diffusiongemma_torch.demo.tasks import sample_task
from training.demo_examples import Example, canvas_example, completion_text, copy_example, sample_example
from training.demo_tokenizer import VOCAB_SIZE, build_tokenizer

CANVAS = 32
COPY_SHARE = 0.1
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
GENERATION_CONFIG = {
    "max_denoising_steps": 32,
    "t_max": 0.5,
    "t_min": 0.1,
    "confidence_threshold": 0.005,
    "stability_threshold": 1,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "pad_token_id": 0,
}


def model_config(hidden: int, layers: int, heads: int = 8, head_dim: int = 20) -> DiffusionGemmaConfig:
    """Sliding and full-attention layers alternating, MoE with 4 experts (top 2), a 32-token canvas."""
    kinds = ["sliding_attention", "full_attention"] * (layers // 2)
    text = DiffusionGemmaTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden,
        num_experts=4, top_k_experts=2, num_hidden_layers=layers, layer_types=kinds, num_attention_heads=heads,
        num_key_value_heads=heads // 2, head_dim=head_dim, global_head_dim=2 * head_dim,
        num_global_key_value_heads=1, sliding_window=64, max_position_embeddings=4096, pad_token_id=0, eos_token_id=1,
        bos_token_id=2,
        rope_parameters={kind: {"rope_type": "default", "rope_theta": 10_000.0} for kind in set(kinds)},
    )  # fmt: skip
    vision = Gemma4VisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=8,
    )  # fmt: skip
    return DiffusionGemmaConfig(
        text_config=text, vision_config=vision, canvas_length=CANVAS, image_token_id=VOCAB_SIZE - 1,
        boi_token_id=VOCAB_SIZE - 2, eoi_token_id=VOCAB_SIZE - 3,
    )  # fmt: skip


def write_tokenizer(directory: Path, seed: int) -> ChatFormat:
    """Learn the tokenizer on rendered demo conversations (prompt and answer text)."""
    if directory != DEMO_DIR:
        shutil.copy(DEMO_DIR / "chat_template.jinja", directory / "chat_template.jinja")
    template = ChatTemplate.from_directory(directory)
    rng = random.Random(seed)
    corpus = []
    for _ in range(3000):
        task = sample_task(rng, rng.choice(["sort", "reverse", "add"]))
        thinking = rng.random() < 0.5
        corpus.append(template.render(task.messages, tools=task.tools, thinking=thinking))
        corpus.append(completion_text(task, thinking))
    build_tokenizer(corpus, directory)
    return ChatFormat.from_directory(directory)


def batches(rng: random.Random, chat: ChatFormat, size: int, copy_steps: int, pool: int = 16) -> Iterator[Batch]:
    """Endless batches of left-padded encoder ids, their mask and the clean target canvases.

    The first `copy_steps` batches (rounded up to whole pools) are copy exercises only, later ones `COPY_SHARE` of
    them (a curriculum: see `copy_example`). Examples are drawn `pool` batches at a time and grouped by length, which
    keeps padding (wasted compute) small.
    """
    drawn = 0
    while True:
        share = 1.0 if drawn < copy_steps else COPY_SHARE
        pairs = sorted(
            (canvas_example(_example(rng, chat, share), rng, CANVAS, 0) for _ in range(size * pool)),
            key=lambda pair: len(pair[0]),
        )
        groups = [pairs[start : start + size] for start in range(0, len(pairs), size)]
        rng.shuffle(groups)
        drawn += pool
        yield from (_collate(group) for group in groups)


def _example(rng: random.Random, chat: ChatFormat, copy_share: float) -> Example:
    return copy_example(rng, chat, CANVAS) if rng.random() < copy_share else sample_example(rng, chat)


def _collate(pairs: list[tuple[list[int], list[int]]]) -> Batch:
    length = max(len(ids) for ids, _ in pairs)
    ids = torch.zeros(len(pairs), length, dtype=torch.long)
    mask = torch.zeros(len(pairs), length, dtype=torch.bool)
    for row, (prompt, _) in enumerate(pairs):
        ids[row, length - len(prompt) :] = torch.tensor(prompt)
        mask[row, length - len(prompt) :] = True
    return ids, mask, torch.tensor([target for _, target in pairs])


def training_loss(
    model: DiffusionGemmaForBlockDiffusion, ids: torch.Tensor, mask: torch.Tensor, clean: torch.Tensor
) -> torch.Tensor:
    """One step of the objective; the prompt is encoded once and read by both decoder passes."""
    size, length = ids.shape
    vocab = model.config.text_config.vocab_size
    noise_level = torch.empty(size, 1).uniform_(1e-3, 1 - 1e-3)
    noisy = torch.where(torch.rand(clean.shape) < noise_level, torch.randint(0, vocab, clean.shape), clean)
    cache = DynamicCache(config=model.config.text_config)
    positions = torch.arange(length).unsqueeze(0).expand(size, -1)
    model.model.encoder(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
    )
    decoder_inputs = {
        "past_key_values": cache,
        "decoder_input_ids": noisy,
        "decoder_attention_mask": F.pad(mask, (0, CANVAS), value=True),
        "decoder_position_ids": torch.arange(length, length + CANVAS).unsqueeze(0).expand(size, -1),
    }
    with torch.no_grad():
        first = model(**decoder_inputs).logits
    temperature = torch.empty(size, 1, 1).uniform_(GENERATION_CONFIG["t_min"], GENERATION_CONFIG["t_max"])
    logits = model(
        **decoder_inputs,
        self_conditioning_logits=first / temperature,
        self_conditioning_mask=torch.rand(size) < 0.5,
    ).logits
    return F.cross_entropy(logits.reshape(-1, vocab), clean.reshape(-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("--steps", type=int, default=5800)
    parser.add_argument("--copy-steps", type=int, default=300, help="steps of copy exercises only, at the start")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--lr", type=float, default=8e-3)
    parser.add_argument("--hidden", type=int, default=160)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    chat = write_tokenizer(args.out, args.seed)
    model = DiffusionGemmaForBlockDiffusion(model_config(args.hidden, args.layers, args.heads, args.head_dim)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps)),
    )
    started, smoothed = time.monotonic(), None
    for step, examples in enumerate(batches(random.Random(args.seed), chat, args.batch, args.copy_steps), start=1):
        if step > args.steps:
            break
        loss = training_loss(model, *examples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step:5d}  loss {smoothed:.4f}  {time.monotonic() - started:6.0f} s", flush=True)
    model.eval().to(torch.bfloat16).save_pretrained(args.out)  # bf16 halves the shipped size
    (args.out / "generation_config.json").write_text(json.dumps(_generation_config(chat), indent=2) + "\n")


def _generation_config(chat: ChatFormat) -> dict[str, object]:
    stops = [chat.token_id(token) for token in ("<eos>", "<turn|>", "<|tool_response>")]
    return {**GENERATION_CONFIG, "eos_token_id": stops}


if __name__ == "__main__":
    main()
