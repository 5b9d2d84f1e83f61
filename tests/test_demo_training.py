"""The demo model's training examples (`training/`): what the curriculum's copy exercises ask of the model."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("transformers")

from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch.demo import DEMO_DIR
from diffusiongemma_torch.demo.tasks import WORDS
from training.demo_examples import copy_example

CANVAS = 32


def test_copy_exercises_write_the_prompts_last_items_in_the_asked_form() -> None:
    chat = ChatFormat.from_directory(DEMO_DIR)
    rng = random.Random(0)
    head, tail = chat.encode("<bos>"), chat.encode("<turn|>\n<|turn>model\n")
    forms = set()
    for _ in range(200):
        example = copy_example(rng, chat, CANVAS)
        assert example.prompt[: len(head)] == head
        assert example.prompt[-len(tail) :] == tail
        items = [chat.decode([token]) for token in example.prompt[len(head) : -len(tail)]]
        written = [chat.decode([token]) for token in example.answer]
        assert CANVAS <= len(items) <= CANVAS + 18
        assert len(written) == CANVAS
        assert [item.strip() for item in items[-CANVAS:]] == [word.strip() for word in written]
        assert all((item.strip().isdigit() and int(item) <= 198) or item.strip() in WORDS for item in items)
        forms.add((items[0].startswith(" "), written[0].startswith(" "), items[0].strip().isdigit()))
    assert forms == {(True, True, True), (True, False, True), (False, False, True), (True, True, False),
                     (True, False, False)}  # fmt: skip
