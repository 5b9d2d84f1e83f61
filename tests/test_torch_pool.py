"""Continuous batching (`RowPool`): rows that join at any step, with their own settings and canvas clocks, each get
what their prompt gets alone (the demo model, through the engine)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from diffusiongemma_sdk import Message
from diffusiongemma_sdk._local.settings import SamplerSettings
from diffusiongemma_torch import _pool as pool_module
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch._checkpoint import Checkpoint, load_checkpoint
from diffusiongemma_torch._engine import CanvasCommitted, DenoiseStep, generate_canvases
from diffusiongemma_torch._pool import Row, RowPool
from diffusiongemma_torch._prefix import PrefixCache
from diffusiongemma_torch.demo import DEMO_DIR

pytestmark = pytest.mark.timeout(180)

REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("Reverse these words: red green blue yellow cat dog", {}),
    ("Sort these numbers: " + " ".join(str(n) for n in range(70, 30, -1)), {}),  # two canvases
    ("Sort these numbers: 17 4 9", {"entropy_bound": 0.02, "max_denoising_steps": 40}),  # other settings
    ("What is 12 + 30?", {"reference": True}),  # the reference sampler
    ("Sort these numbers: 5 3 9 1", {"t_max": 0.3, "t_min": 0.05, "banned_token_ids": (9,)}),
]
"""Each prompt with the sampler settings it runs under (over the checkpoint's defaults)."""


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return load_checkpoint(str(DEMO_DIR))


def prompt_ids(checkpoint: Checkpoint, text: str) -> list[int]:
    chat = ChatFormat.from_directory(checkpoint.directory)
    return chat.encode(chat.render([Message(role="user", content=text)], tools=[], thinking=False))


def settings_for(checkpoint: Checkpoint, changes: dict[str, Any]) -> SamplerSettings:
    return dataclasses.replace(checkpoint.defaults.resolve(None), **changes)


def stops(checkpoint: Checkpoint) -> dict[str, Any]:
    return {"stop_token_ids": checkpoint.defaults.eos_token_ids, "pad_token_id": checkpoint.defaults.pad_token_id}


def summary(reports: list[Any]) -> dict[str, Any]:
    """What a row's reports say: committed tokens, steps per canvas, decoder passes, drafts."""
    commits = [r for r in reports if isinstance(r, CanvasCommitted)]
    return {
        "tokens": [r.tokens[0].tolist() for r in commits],
        "steps": [int(r.steps[0]) for r in commits],
        "passes": int(commits[-1].decoder_passes[0]),
        "drafts": [r.draft[0].tolist() for r in reports if isinstance(r, DenoiseStep)],
    }


def alone(checkpoint: Checkpoint, text: str, changes: dict[str, Any], seed: int) -> dict[str, Any]:
    """The prompt generated alone by the static engine, with one generator of its own."""
    prompt = torch.tensor([prompt_ids(checkpoint, text)])
    generator = torch.Generator().manual_seed(seed)
    settings = settings_for(checkpoint, changes)
    reports = list(
        generate_canvases(checkpoint.net, prompt, settings, max_canvases=2, generator=generator, **stops(checkpoint))
    )
    return summary(reports)


def test_rows_joining_at_any_step_with_their_own_settings_get_what_they_get_alone(checkpoint: Checkpoint) -> None:
    pool = RowPool(checkpoint.net, **stops(checkpoint))
    reports: dict[Row, list[Any]] = {}
    rows: list[Row] = []
    joins = {0: [0, 1], 3: [2, 3], 7: [4]}  # step -> the requests that join before it (prefilled together)
    for step in range(400):
        for index in joins.get(step, []):
            text, changes = REQUESTS[index]
            generator = torch.Generator().manual_seed(index)
            rows.append(pool.admit(prompt_ids(checkpoint, text), settings_for(checkpoint, changes), generator, 2))
            reports[rows[-1]] = []
        for row, made in pool.step().items():
            reports[row].extend(made)
        if not pool.rows and step > max(joins):
            break
    assert not pool.rows  # every row finished and left
    for index, row in enumerate(rows):
        text, changes = REQUESTS[index]
        assert summary(reports[row]) == alone(checkpoint, text, changes, seed=index), text
    assert len(summary(reports[rows[1]])["tokens"]) == 2  # the long sort took two canvases while others came and went


def test_a_row_removed_mid_canvas_leaves_the_others_untouched(checkpoint: Checkpoint) -> None:
    pool = RowPool(checkpoint.net, **stops(checkpoint))
    keep = pool.admit(
        prompt_ids(checkpoint, REQUESTS[1][0]), settings_for(checkpoint, {}), torch.Generator().manual_seed(1), 2
    )
    leave = pool.admit(
        prompt_ids(checkpoint, REQUESTS[0][0]), settings_for(checkpoint, {}), torch.Generator().manual_seed(0), 2
    )
    kept: list[Any] = []
    kept.extend(pool.step()[keep])
    pool.remove(leave)  # its reader went away
    while keep in pool.rows:
        kept.extend(pool.step()[keep])
    assert summary(kept) == alone(checkpoint, REQUESTS[1][0], {}, seed=1)


CONVERSATION = [
    Message(role="system", content="You are a careful assistant. " * 6),
    Message(role="user", content="Reverse these words: red green blue yellow cat dog"),
    Message(role="assistant", content="dog cat yellow blue green red"),
    Message(role="user", content="Sort these numbers: 17 4 9 30 2"),
]


def conversation_ids(checkpoint: Checkpoint, turns: int) -> list[int]:
    chat = ChatFormat.from_directory(checkpoint.directory)
    return chat.encode(chat.render(CONVERSATION[: 2 * turns], tools=[], thinking=False))


@pytest.mark.parametrize("max_bytes", [1 << 30, 40_000])  # room for everything; room for a few blocks only
def test_prompts_that_start_alike_reuse_encoded_blocks_and_answer_as_cold(
    checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch, max_bytes: int
) -> None:
    monkeypatch.setattr(pool_module, "PREFILL_CHUNK", 8)  # blocks of 8 tokens, so the demo's prompts span many
    settings = settings_for(checkpoint, {})
    prefixes = PrefixCache(max_bytes=max_bytes, block=8)
    warm = RowPool(checkpoint.net, prefix_cache=prefixes, **stops(checkpoint))
    cold = RowPool(checkpoint.net, **stops(checkpoint))
    answers: dict[str, list[Any]] = {"warm": [], "cold": []}
    for turns, seed in ((1, 3), (2, 4), (2, 5)):  # the second turn extends the first; then the same prompt again
        ids = conversation_ids(checkpoint, turns)
        for name, pool in (("warm", warm), ("cold", cold)):
            row = pool.admit(ids, settings, torch.Generator().manual_seed(seed), 2)
            made: list[Any] = []
            while row in pool.rows:
                made.extend(pool.step()[row])
            answers[name].append(summary(made))
    assert answers["warm"] == answers["cold"]
    assert prefixes.hits > 0
    assert prefixes.bytes <= max_bytes
