"""How fast the demo architecture learns to read the prompt from the decoder: three synthetic probes.

    python -m training.copy_probes [--steps 300] [--heads 8]

Each probe trains a fresh demo-sized model (the training script's `model_config`) for `--steps` steps on one
synthetic job, with a fully noised canvas (the hardest case: no answer token is visible), and prints the training
accuracy every 25 steps:

- `position`: canvas slot j must write token 10 + j (the decoder must know where it is in the canvas);
- `fixed copy`: slot j copies the prompt item at a fixed distance (the last 32 of 32 to 50 random numbers);
- `reversed copy`: slot j copies item n - 1 - j (the distance to read grows with j, as in the reverse task).

The demo tasks need the third kind of reading (and sorting, which is harder). docs/demo-model.md records the results.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch.demo import DEMO_DIR
from training.train_demo_model import CANVAS, model_config

Probe = Callable[[list[int]], list[int]]
PROBES: dict[str, Probe] = {
    "position": lambda items: [10 + slot for slot in range(CANVAS)],
    "fixed copy": lambda items: items[-CANVAS:],
    "reversed copy": lambda items: items[::-1][:CANVAS],
}


def train_probe(target: Probe, chat: ChatFormat, steps: int, heads: int, batch: int = 24) -> None:
    """Train a fresh model on one probe and print its accuracy on the training batches as it learns."""
    torch.manual_seed(0)
    rng = random.Random(0)
    model = DiffusionGemmaForBlockDiffusion(model_config(160, 4, heads, 160 // heads)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    numbers = [chat.encode(f" {n}")[0] for n in range(100)]
    suffix = chat.encode("<turn|>\n<|turn>model\n")
    vocab = model.config.text_config.vocab_size
    for step in range(1, steps + 1):
        count = rng.randint(CANVAS, 50)
        items = [rng.choices(numbers, k=count) for _ in range(batch)]
        ids = torch.tensor([[*chat.encode("<bos>"), *row, *suffix] for row in items])
        clean = torch.tensor([target(row) for row in items])
        length = ids.shape[1]
        cache = DynamicCache(config=model.config.text_config)
        model.model.encoder(input_ids=ids, past_key_values=cache, use_cache=True)
        logits = model(
            past_key_values=cache,
            decoder_input_ids=torch.randint(0, vocab, clean.shape),
            decoder_position_ids=torch.arange(length, length + CANVAS).expand(batch, -1),
        ).logits
        loss = F.cross_entropy(logits.reshape(-1, vocab), clean.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            accuracy = (logits.argmax(-1) == clean).float().mean().item()
            print(f"  step {step:4d}  loss {loss.item():.3f}  accuracy {accuracy:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--probe", choices=list(PROBES), action="append", help="run only these (default: all)")
    args = parser.parse_args()
    chat = ChatFormat.from_directory(DEMO_DIR)
    for name in args.probe or PROBES:
        print(f"{name}:")
        train_probe(PROBES[name], chat, args.steps, args.heads)


if __name__ == "__main__":
    main()
