"""How closely `gguf:demo` on llama.cpp follows `torch:demo`: logits of every phase, and answers on held-out prompts.

    .venv/bin/python evals/gguf_fidelity.py [--prompts 50]

1. Logits: the demo model converted to F32, the same tokens through llama.cpp (PR #24423) and the torch engine:
   the prompt's encoder pass (prefill, its last row), a canvas's first denoising step, a self-conditioned step, and
   a step after a committed canvas; the largest difference relative to the torch engine's largest logit, and how
   often the argmax agrees, over the prompts of every demo task.
2. Answers: held-out prompts of evals/demo_tasks.py (its seed), one generation each at the same seed on `gguf:demo`
   (llama.cpp, `sampling="torch"`: the torch engine's sampler, so the same random numbers as `torch:demo`) and on
   `torch:demo`; the share of answers that are equal (text and tool calls), and each side's exact-match accuracy.

Needs a DiffusionGemma-enabled llama-cpp-python (`diffusiongemma build-llama-cpp`) and diffusiongemma-torch.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for evals and tests.support, run as a script

from diffusiongemma_gguf import GGUFHeader
from diffusiongemma_gguf._demo import demo_gguf
from diffusiongemma_gguf._llama import LlamaCppModel
from diffusiongemma_sdk import AsyncDiffusionGemma, Generation
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch._checkpoint import load_checkpoint
from diffusiongemma_torch.demo import DEMO_DIR
from diffusiongemma_torch.demo.tasks import check
from evals.demo_tasks import EVAL_SEED, TASKS
from tests.support.gguf_fidelity import PHASES, logits_side_by_side, relative_difference


def logits_table(path: Path, prompts: int) -> None:
    header = GGUFHeader.read(path)
    model = LlamaCppModel(path, canvas_length=header.canvas_length, context=header.context_length, threads=2,
                          prefill_chunk=512)  # fmt: skip
    net = load_checkpoint(str(DEMO_DIR), device="cpu", dtype="float32").net
    chat = ChatFormat.from_directory(DEMO_DIR)
    worst = dict.fromkeys(PHASES, 0.0)
    agree = {phase: [0, 0] for phase in PHASES}
    for name, make in TASKS.items():
        rng = random.Random(f"{EVAL_SEED}-logits-{name}")
        for index in range(prompts):
            task = make(rng)
            prompt = chat.encode(chat.render(task.messages, tools=task.tools, thinking=index % 2 == 1))
            for phase, (ours, theirs) in logits_side_by_side(model, net, prompt, seed=index).items():
                worst[phase] = max(worst[phase], relative_difference(ours, theirs))
                same = ours.argmax(-1) == theirs.argmax(-1)
                agree[phase][0] += int(same.sum())
                agree[phase][1] += same.size
    model.close()
    print(f"F32 logits, llama.cpp against the torch engine, {prompts * len(TASKS)} prompts:\n")
    print("| phase | max relative difference | argmax agreement |")
    print("|---|---|---|")
    for phase in PHASES:
        print(f"| {phase} | {worst[phase]:.2e} | {agree[phase][0] / agree[phase][1]:.4%} |")


async def answers_table(path: Path, prompts: int) -> None:
    def same(a: Generation, b: Generation) -> bool:
        calls = [(c.name, c.arguments) for c in a.tool_calls], [(c.name, c.arguments) for c in b.tool_calls]
        return a.text == b.text and calls[0] == calls[1]

    print(f"\nAnswers at the same seed, {prompts} held-out prompts per task (evals/demo_tasks.py's):\n")
    print("| task | prompts | equal answers | gguf:demo exact match | torch:demo exact match |")
    print("|---|---|---|---|---|")
    totals = [0, 0]
    same_sampler = {"sampling": "torch"}  # the torch engine's sampler and random streams
    async with (
        AsyncDiffusionGemma(f"gguf:{path}", backend_options=same_sampler) as gguf,
        AsyncDiffusionGemma("torch:demo") as torch_demo,
    ):
        for name, make in TASKS.items():
            rng = random.Random(f"{EVAL_SEED}-{name}")
            equal = right = right_torch = 0
            for index in range(prompts):
                task = make(rng)
                options = {"tools": task.tools or None, "max_tokens": 128, "seed": index}
                ours = await gguf.generate(task.messages, **options)  # type: ignore[arg-type]
                theirs = await torch_demo.generate(task.messages, **options)  # type: ignore[arg-type]
                equal += same(ours, theirs)
                right += check(task, ours)
                right_torch += check(task, theirs)
            totals[0] += equal
            totals[1] += prompts
            print(
                f"| {name} | {prompts} | {equal / prompts:.1%} | {right / prompts:.1%} | {right_torch / prompts:.1%} |"
            )
    print(f"| all | {totals[1]} | {totals[0] / totals[1]:.1%} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=50, help="held-out prompts per task for the answers")
    parser.add_argument("--logit-prompts", type=int, default=5, help="prompts per task for the logits")
    args = parser.parse_args()
    path = demo_gguf()
    logits_table(path, args.logit_prompts)
    asyncio.run(answers_table(path, args.prompts))


if __name__ == "__main__":
    main()
