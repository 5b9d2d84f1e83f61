"""Multi-turn agent conversations on the torch engine, with the prefix cache and without it, in one run.

Eight conversations of six turns share a system prompt of about 1,500 tokens that declares a tool; each turn sends the
whole conversation so far, as agents do. The same random mid-size checkpoint (hidden 512, 4 layers, vocab 32,768,
canvas 256) answers every turn twice, turn by turn, on two engines: one with `prefix_cache_mb=0`, one with the
default prefix cache. Answers must be identical (asserted). Prints each turn's time on both, the tokens the cache
let the warm engine skip, and the ratio of the mean time per turn.

Answers are one canvas taking `--steps` denoising steps (2 by default: what a confident answer takes, as the demo
model's tool calls and short answers do), so a turn's time is its prompt's prefill plus a short generation.

    .venv/bin/python benchmarks/agent_turns.py [--conversations 8] [--turns 6] [--steps 2]
        [--json docs/data/agent_turns.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._models import MID_CONFIG
from benchmarks._results import write_bars
from diffusiongemma_sdk import DiffusionGemma, Message, Tool
from diffusiongemma_torch._backend import TorchBackend
from tests.support.tiny_checkpoint import WORDS, build_tiny_checkpoint

ADD = Tool(
    name="add",
    description="Add two integers.",
    parameters={"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
)


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS[9:]) for _ in range(count))  # plain words and numbers, no markup


def build(directory: Path) -> None:
    build_tiny_checkpoint(directory, MID_CONFIG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--system-words", type=int, default=1500, help="words (tokens) in the shared system prompt")
    parser.add_argument("--user-words", type=int, default=40, help="words in each new user message")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per canvas")
    parser.add_argument("--json", type=Path, help="also write the table to this file (docs/data/)")
    args = parser.parse_args()

    rng = random.Random(7)
    system = Message(role="system", content=words(rng, args.system_words))
    conversations: list[list[Message]] = [[system] for _ in range(args.conversations)]
    diffusion = {"max_denoising_steps": args.steps}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        build(Path(folder))
        spec = f"torch:{folder}"
        with (
            DiffusionGemma(spec, backend_options={"prefix_cache_mb": 0}) as cold,
            DiffusionGemma(spec, backend_options={"prefix_cache_mb": 1024}) as warm,
        ):
            engine = warm.backend
            assert isinstance(engine, TorchBackend)
            prefixes = engine._scheduler.pool.prefix_cache
            assert prefixes is not None
            for client in (cold, warm):  # warm-up, not counted: the first call pays for lazy initialisation
                client.generate("Sort these numbers: 3 1 2", max_tokens=256, diffusion=diffusion, seed=0)
            prefixes.hits = 0
            for turn in range(args.turns):
                for index, conversation in enumerate(conversations):
                    conversation.append(Message(role="user", content=words(rng, args.user_words)))
                    seed = 1000 * index + turn
                    times, answers = [], []
                    hits_before = prefixes.hits
                    for client in (cold, warm):
                        started = time.perf_counter()
                        answer = client.generate(
                            conversation, tools=[ADD], max_tokens=256, diffusion=diffusion, seed=seed
                        )
                        times.append(time.perf_counter() - started)
                        answers.append(answer)
                    assert answers[0].text == answers[1].text, "the prefix cache changed an answer"
                    reused = (prefixes.hits - hits_before) * prefixes.block
                    rows.append(
                        {"turn": turn + 1, "conversation": index, "prompt": answers[1].usage.prompt_tokens,
                         "reused": reused, "cold_s": times[0], "warm_s": times[1]}
                    )  # fmt: skip
                    conversation.append(Message(role="assistant", content=answers[0].text))
    print(
        f"{args.conversations} conversations x {args.turns} turns, system prompt {args.system_words} words and a tool, "
        f"one canvas of 256 at {args.steps} steps; mid config (hidden 512, vocab 32768), CPU"
    )
    print(f"{'turn':>4}  {'prompt tokens':>13}  {'reused':>7}  {'cold s':>7}  {'warm s':>7}  {'ratio':>6}")
    per_turn: list[dict[str, Any]] = []
    for turn in range(1, args.turns + 1):
        mine = [row for row in rows if row["turn"] == turn]
        cold_s = statistics.mean(row["cold_s"] for row in mine)
        warm_s = statistics.mean(row["warm_s"] for row in mine)
        prompt = statistics.mean(row["prompt"] for row in mine)
        reused = statistics.mean(row["reused"] for row in mine)
        per_turn.append({"turn": f"turn {turn}", "cold_s": cold_s, "warm_s": warm_s, "ratio": cold_s / warm_s})
        print(f"{turn:>4}  {prompt:>13.0f}  {reused:>7.0f}  {cold_s:>7.3f}  {warm_s:>7.3f}  {cold_s / warm_s:>5.2f}x")
    cold_mean = statistics.mean(row["cold_s"] for row in rows)
    warm_mean = statistics.mean(row["warm_s"] for row in rows)
    print(f"mean time per turn: {cold_mean:.3f} s without the prefix cache, {warm_mean:.3f} s with it: "
          f"{cold_mean / warm_mean:.2f}x; answers identical: {len(rows)}/{len(rows)}")  # fmt: skip
    write_bars(
        args.json,
        title=f"Agent turns: mean time per turn with the prefix cache ({cold_mean / warm_mean:.2f}x faster overall)",
        rows=[{"turn": row["turn"], "warm_s": row["warm_s"], "ratio": row["ratio"]} for row in per_turn],
        label="turn",
        value="warm_s",
        value_label="seconds per turn with the prefix cache (ratio: without / with)",
    )


if __name__ == "__main__":
    main()
