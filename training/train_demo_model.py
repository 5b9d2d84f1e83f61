"""Train the bundled demo model: a small DiffusionGemma taught the demo tasks with the uniform-state objective.

    python -m training.train_demo_model            # writes backends/torch/diffusiongemma_torch/demo/

Seeded and deterministic on CPU for a given thread count (the last bits of a step differ between 1 and 2 threads).
The model is built from transformers' own DiffusionGemma config and model classes and saved with `save_pretrained`,
so it has the real checkpoint's layout.
Objective (shared/reference/diffusiongemma-model.md, appendix): one noise level t ~ U(0.001, 0.999) per example, each
canvas position replaced by a uniformly random token with probability t, self-conditioning on half of the examples
from a no-gradient first pass, cross-entropy against the clean canvas over every position (padding included).
Auxiliary: the encoder's causal pass also runs over the clean target canvas and is trained to predict each answer
token from the ones before it (the appendix's optional encoder loss); the decoder does not see those entries.
Curriculum: the first steps are dense copy exercises only (`demo_examples.copy_example`), then 10% of the examples.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from diffusiongemma_torch.demo.tasks import SORT_LENGTHS, TaskKind, sample_task
from training.demo_examples import Example, canvas_example, completion_text, copy_example, sample_example
from training.demo_tokenizer import VOCAB_SIZE, build_tokenizer

CANVAS = 32
COPY_SHARE = 0.1
SORT_START = 8
IGNORE = -100
GENERATION_CONFIG = {
    "max_denoising_steps": 32,
    "t_max": 0.5,
    "t_min": 0.1,
    "confidence_threshold": 0.005,
    "stability_threshold": 1,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "pad_token_id": 0,
}


@dataclass
class Batch:
    """Left-padded encoder ids and mask, clean target canvases, and (with the encoder loss) its next-token targets.

    With the encoder loss, the last `canvas` encoder positions hold the clean target canvas (for the encoder
    loss); the decoder must not see them.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    clean: torch.Tensor
    next_tokens: torch.Tensor | None


def model_config(
    hidden: int, layers: int, heads: int = 8, head_dim: int = 20, canvas: int = CANVAS, window: int = 64
) -> DiffusionGemmaConfig:
    """Sliding and full-attention layers alternating, MoE with 4 experts (top 2)."""
    kinds = ["sliding_attention", "full_attention"] * (layers // 2)
    text = DiffusionGemmaTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden,
        num_experts=4, top_k_experts=2, num_hidden_layers=layers, layer_types=kinds, num_attention_heads=heads,
        num_key_value_heads=heads // 2, head_dim=head_dim, global_head_dim=2 * head_dim,
        num_global_key_value_heads=1, sliding_window=window, max_position_embeddings=4096, pad_token_id=0,
        eos_token_id=1, bos_token_id=2,
        rope_parameters={kind: {"rope_type": "default", "rope_theta": 10_000.0} for kind in set(kinds)},
    )  # fmt: skip
    vision = Gemma4VisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=8,
    )  # fmt: skip
    return DiffusionGemmaConfig(
        text_config=text, vision_config=vision, canvas_length=canvas, image_token_id=VOCAB_SIZE - 1,
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


@dataclass
class Data:
    """What the batches are drawn from."""

    canvas: int
    mixture: dict[TaskKind, float]
    copy_steps: int
    encoder_loss: bool
    sort_ramp: int = 0
    """Over the first `sort_ramp` batches the sort lists' longest length grows from `SORT_START` to 40."""
    pool_first: bool = False
    """The order of the random draws (a pool's examples, then their canvases; or each canvas after its example)."""


def batches(rng: random.Random, chat: ChatFormat, size: int, data: Data, pool: int = 16) -> Iterator[Batch]:
    """Endless batches (see `Batch`).

    The first `copy_steps` batches (rounded up to whole pools) are copy exercises only, later ones `COPY_SHARE` of
    them (a curriculum: see `copy_example`). Examples are drawn `pool` batches at a time and grouped by length,
    which keeps padding (wasted compute) small.
    """
    drawn = 0
    while True:
        share = 1.0 if drawn < data.copy_steps else COPY_SHARE
        sort_max = None
        if drawn < data.sort_ramp:
            sort_max = SORT_START + (SORT_LENGTHS[1] - SORT_START) * drawn // data.sort_ramp
        if data.pool_first:  # the pool's examples, then their canvases
            examples = [_example(rng, chat, share, data, sort_max) for _ in range(size * pool)]
            drawn_pairs = [canvas_example(example, rng, data.canvas, 0) for example in examples]
        else:  # each example's canvas right after the example
            drawn_pairs = [
                canvas_example(_example(rng, chat, share, data, sort_max), rng, data.canvas, 0)
                for _ in range(size * pool)
            ]
        pairs = sorted(drawn_pairs, key=lambda pair: len(pair[0]))
        groups = [pairs[start : start + size] for start in range(0, len(pairs), size)]
        rng.shuffle(groups)
        drawn += pool
        yield from (_collate(group, data.encoder_loss) for group in groups)


def _example(rng: random.Random, chat: ChatFormat, copy_share: float, data: Data, sort_max: int | None) -> Example:
    if rng.random() < copy_share:
        return copy_example(rng, chat, data.canvas)
    return sample_example(rng, chat, data.mixture, sort_max)


def _collate(pairs: list[tuple[list[int], list[int], int]], encoder_loss: bool) -> Batch:
    length = max(len(ids) for ids, _, _ in pairs)
    ids = torch.zeros(len(pairs), length, dtype=torch.long)
    mask = torch.zeros(len(pairs), length, dtype=torch.bool)
    for row, (prompt, _, _) in enumerate(pairs):
        ids[row, length - len(prompt) :] = torch.tensor(prompt)
        mask[row, length - len(prompt) :] = True
    clean = torch.tensor([target for _, target, _ in pairs])
    if not encoder_loss:
        return Batch(ids, mask, clean, None)
    # The encoder also reads the clean canvas; position p learns the answer token at p + 1.
    full = torch.cat([ids, clean], dim=1)
    next_tokens = torch.full_like(full, IGNORE)
    for row, (_, target, answered) in enumerate(pairs):
        first = length - answered - 1  # the position before the answer's first token
        real = sum(token != 0 for token in target)
        last = length + real - 1  # the last real target token (stop token included)
        next_tokens[row, first:last] = full[row, first + 1 : last + 1]
    return Batch(full, torch.cat([mask, torch.ones_like(clean, dtype=torch.bool)], dim=1), clean, next_tokens)


def training_loss(
    model: DiffusionGemmaForBlockDiffusion,
    batch: Batch,
    canvas: int,
    encoder_weight: float = 0.0,
    prefix_share: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """One step of the objective; the prompt is encoded once and read by both decoder passes.

    `prefix_share` of the examples keep a clean prefix of random length and noise only the rest (the pattern the
    sampler makes when it accepts a canvas from left to right). Returns the loss to minimise and the diffusion loss
    alone (for the log).
    """
    ids, mask, clean = batch.ids, batch.mask, batch.clean
    size, length = ids.shape
    vocab = model.config.text_config.vocab_size
    noise_level = torch.empty(size, 1).uniform_(1e-3, 1 - 1e-3)
    if prefix_share:
        kept = torch.randint(0, canvas + 1, (size, 1))
        prefixed = (torch.rand(size, 1) < prefix_share) & (torch.arange(canvas)[None, :] < kept)
        noise_level = torch.where(prefixed, 0.0, noise_level)
    noisy = torch.where(torch.rand(clean.shape) < noise_level, torch.randint(0, vocab, clean.shape), clean)
    cache = DynamicCache(config=model.config.text_config)
    positions = torch.arange(length).unsqueeze(0).expand(size, -1)
    encoded = model.model.encoder(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
    )
    context = length
    visible = mask
    if batch.next_tokens is not None:
        context = length - canvas  # the decoder's canvas takes the positions of the encoder's copy of it
        visible = mask.clone()
        visible[:, context:] = False
    decoder_inputs = {
        "past_key_values": cache,
        "decoder_input_ids": noisy,
        "decoder_attention_mask": F.pad(visible, (0, canvas), value=True),
        "decoder_position_ids": torch.arange(context, context + canvas).unsqueeze(0).expand(size, -1),
    }
    with torch.no_grad():
        first = model(**decoder_inputs).logits
    temperature = torch.empty(size, 1, 1).uniform_(GENERATION_CONFIG["t_min"], GENERATION_CONFIG["t_max"])
    logits = model(
        **decoder_inputs,
        self_conditioning_logits=first / temperature,
        self_conditioning_mask=torch.rand(size) < 0.5,
    ).logits
    diffusion = F.cross_entropy(logits.reshape(-1, vocab), clean.reshape(-1))
    if batch.next_tokens is None or not encoder_weight:
        return diffusion, diffusion.item()
    scored = batch.next_tokens != IGNORE
    hidden = encoded.last_hidden_state[scored]
    cap = model.final_logit_softcapping
    encoder_logits = torch.tanh(model.lm_head(hidden).float() / cap) * cap
    encoder = F.cross_entropy(encoder_logits, batch.next_tokens[scored])
    return diffusion + encoder_weight * encoder, diffusion.item()


def _mixture(text: str) -> dict[TaskKind, float]:
    shares = [float(share) for share in text.split("/")]
    return dict(zip(("sort", "reverse", "add"), shares, strict=True))  # type: ignore[arg-type]


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
    parser.add_argument("--canvas", type=int, default=CANVAS)
    parser.add_argument("--window", type=int, default=64, help="sliding window of the sliding-attention layers")
    parser.add_argument("--mixture", default="0.3/0.4/0.3", help="shares of sort/reverse/add")
    parser.add_argument("--encoder-loss", type=float, default=0.0, help="weight of the encoder's next-token loss")
    parser.add_argument("--prefix-noise", type=float, default=0.0, help="share of canvases with a clean prefix")
    parser.add_argument("--checkpoints", type=Path, help="also save the model every --save-every steps here")
    parser.add_argument("--save-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, help="start from this saved model (its architecture and canvas win)")
    parser.add_argument("--sort-ramp", type=int, default=0, help="steps over which sort lists grow to 40 numbers")
    parser.add_argument(
        "--pool-first", action="store_true", help="draw a pool's examples before their canvases (another seeded stream)"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    if args.init:  # loaded before the tokenizer is written, which may be into the same directory
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.init, dtype=torch.float32).train()
        for part in (model.config.text_config, model.config.vision_config):
            part.dtype = None  # a loading detail, not saved: the config stays the one a fresh run writes
        args.canvas = model.config.canvas_length
    else:
        config = model_config(args.hidden, args.layers, args.heads, args.head_dim, args.canvas, args.window)
        model = DiffusionGemmaForBlockDiffusion(config).train()
    args.out.mkdir(parents=True, exist_ok=True)
    chat = write_tokenizer(args.out, args.seed)
    print(f"{sum(p.numel() for p in model.model.decoder.parameters()):,} parameters", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps)),
    )
    data = Data(
        canvas=args.canvas,
        mixture=_mixture(args.mixture),
        copy_steps=args.copy_steps,
        encoder_loss=args.encoder_loss > 0,
        sort_ramp=args.sort_ramp,
        pool_first=args.pool_first,
    )
    started, smoothed = time.monotonic(), None
    for step, batch in enumerate(batches(random.Random(args.seed), chat, args.batch, data), start=1):
        if step > args.steps:
            break
        loss, diffusion = training_loss(model, batch, args.canvas, args.encoder_loss, args.prefix_noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        smoothed = diffusion if smoothed is None else 0.98 * smoothed + 0.02 * diffusion
        if step % 50 == 0 or step == args.steps:
            print(f"step {step:5d}  loss {smoothed:.4f}  {time.monotonic() - started:6.0f} s", flush=True)
        if args.checkpoints and step % args.save_every == 0 and step < args.steps:
            _save(copy.deepcopy(model), args.checkpoints / f"step-{step}", chat, args.out)
    _save(model, args.out, chat, args.out)


def _save(model: DiffusionGemmaForBlockDiffusion, directory: Path, chat: ChatFormat, tokenizer: Path) -> None:
    """The model in bf16 (half the shipped size), its sampler defaults, and (for a side checkpoint) the tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    model.eval().to(torch.bfloat16).save_pretrained(directory)
    (directory / "generation_config.json").write_text(json.dumps(_generation_config(chat), indent=2) + "\n")
    if directory != tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(tokenizer / name, directory / name)


def _generation_config(chat: ChatFormat) -> dict[str, object]:
    stops = [chat.token_id(token) for token in ("<eos>", "<turn|>", "<|tool_response>")]
    return {**GENERATION_CONFIG, "eos_token_id": stops}


if __name__ == "__main__":
    main()
