"""The demo model's tasks: the user-message formats it was trained on, seeded prompt generators and answer checks.

These formats are a contract: the model is trained on exactly these messages, and outside checks send them.

- `Sort these numbers: 17 4 9` -> `4 9 17` (2 to 40 integers from 0 to 99, repeats allowed);
- `Reverse these words: red green blue` -> `blue green red` (2 to 12 words from `WORDS`, repeats allowed);
- `What is 12 + 30?` with the `add` tool offered -> a call `add(a=12, b=30)`; after the tool message `42` -> `42`
  (integers from 0 to 99).

With thinking on, the model writes a short thought before the same answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from diffusiongemma_sdk import Generation, Message, Tool, ToolCall

__all__ = [
    "WORDS",
    "DemoTask",
    "TaskKind",
    "add",
    "add_task",
    "check",
    "reverse_task",
    "sample_task",
    "sort_task",
]

TaskKind = Literal["sort", "reverse", "add"]

WORDS: tuple[str, ...] = (
    "red", "green", "blue", "yellow", "black", "white", "pink", "gray",
    "cat", "dog", "bird", "fish", "horse", "mouse", "lion", "bear",
    "apple", "pear", "plum", "lemon", "grape", "melon", "peach", "lime",
    "sun", "moon", "star", "rain", "snow", "wind", "tree", "rock",
)  # fmt: skip
"""The words of the reverse task."""

SORT_LENGTHS = (2, 40)
REVERSE_LENGTHS = (2, 12)
OPERANDS = (0, 99)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


ADD_TOOL = Tool.from_function(add)


@dataclass(frozen=True)
class DemoTask:
    """One prompt and what a correct answer is.

    `expected_call` is set for the first turn of the add task (the model must call `add`); `expected_text` is the
    answer text otherwise.
    """

    kind: TaskKind
    messages: list[Message]
    tools: list[Tool] = field(default_factory=list)
    expected_text: str | None = None
    expected_call: tuple[str, dict[str, int]] | None = None


def sort_task(rng: random.Random, length: int | None = None) -> DemoTask:
    """`Sort these numbers: ...` with `length` numbers (random in 2..40 when not given)."""
    count = length or rng.randint(*SORT_LENGTHS)
    numbers = [rng.randint(*OPERANDS) for _ in range(count)]
    return DemoTask(
        kind="sort",
        messages=[Message(role="user", content="Sort these numbers: " + " ".join(map(str, numbers)))],
        expected_text=" ".join(map(str, sorted(numbers))),
    )


def reverse_task(rng: random.Random, length: int | None = None) -> DemoTask:
    """`Reverse these words: ...` with `length` words (random in 2..12 when not given)."""
    count = length or rng.randint(*REVERSE_LENGTHS)
    words = [rng.choice(WORDS) for _ in range(count)]
    return DemoTask(
        kind="reverse",
        messages=[Message(role="user", content="Reverse these words: " + " ".join(words))],
        expected_text=" ".join(reversed(words)),
    )


def add_task(rng: random.Random, *, answered_call: bool = False) -> DemoTask:
    """`What is A + B?` with `add` offered: the call is expected, or (after the tool result) the sum."""
    a, b = rng.randint(*OPERANDS), rng.randint(*OPERANDS)
    question = Message(role="user", content=f"What is {a} + {b}?")
    if not answered_call:
        return DemoTask(kind="add", messages=[question], tools=[ADD_TOOL], expected_call=("add", {"a": a, "b": b}))
    call = ToolCall(id="call_0", name="add", arguments={"a": a, "b": b})
    messages = [
        question,
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content=str(a + b), tool_call_id=call.id, name="add"),
    ]
    return DemoTask(kind="add", messages=messages, tools=[ADD_TOOL], expected_text=str(a + b))


def sample_task(rng: random.Random, kind: TaskKind) -> DemoTask:
    """A random task of one kind (for add, either turn)."""
    if kind == "sort":
        return sort_task(rng)
    if kind == "reverse":
        return reverse_task(rng)
    return add_task(rng, answered_call=rng.random() < 0.5)


def check(task: DemoTask, generation: Generation) -> bool:
    """Whether a generation answers the task exactly."""
    if task.expected_call is not None:
        name, arguments = task.expected_call
        return len(generation.tool_calls) == 1 and (
            generation.tool_calls[0].name == name and generation.tool_calls[0].arguments == arguments
        )
    return not generation.tool_calls and generation.text.strip() == task.expected_text
