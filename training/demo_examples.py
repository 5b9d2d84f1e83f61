"""Training examples for the demo model: demo tasks rendered by the checkpoint's own chat template, as token ids.

An example is one canvas of an answer: the encoder input is the prompt plus the answer's earlier canvases, the target
is the next `canvas_length` answer tokens (the answer ends with its stop token and is padded with `<pad>`).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, replace

from diffusiongemma_sdk import Message, Tool
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch.demo.tasks import ADD_TOOL, WORDS, DemoTask, TaskKind, sample_task, sort_task

THOUGHTS = {
    "sort": "I will sort the numbers.",
    "reverse": "I will reverse the words.",
    "call": "I will call the add tool.",
    "answer": "The tool gave the sum.",
}
MIXTURE: dict[TaskKind, float] = {"sort": 0.30, "reverse": 0.40, "add": 0.30}
COPY_FORMS = [("spaced", "spaced"), ("spaced", "bare"), ("bare", "bare"), ("spaced word", "spaced word"),
              ("spaced word", "bare word")]  # fmt: skip
"""Copy exercises: (the form of the prompt's items, the form the canvas writes them in)."""
_DESCRIPTIONS = ["Add two integers.", "Add two numbers.", "Return the sum of a and b.", "Adds a and b together.", ""]
_FILLER = [
    "the",
    "a",
    "number",
    "value",
    "first",
    "second",
    "returns",
    "sum",
    "of",
    "two",
    "integer",
    "tool",
    "helper",
    "compute",
    "plus",
    "total",
]
_OTHER_TOOLS = [
    Tool(name="multiply", description="Multiply two integers.", parameters=ADD_TOOL.parameters),
    Tool(
        name="lookup",
        description="Look up a word.",
        parameters={"properties": {"query": {"type": "string"}}, "required": ["query"], "type": "object"},
    ),
]


@dataclass(frozen=True)
class Example:
    """A prompt's token ids and the ids of the whole answer the model must write."""

    prompt: list[int]
    answer: list[int]


def completion_text(task: DemoTask, thinking: bool) -> str:
    """What the model writes for a task: optional thought, then the answer or the tool call, then its stop token."""
    if task.expected_call is not None:
        arguments = task.expected_call[1]
        thought = THOUGHTS["call"]
        body = f"<|tool_call>call:add{{a:{arguments['a']},b:{arguments['b']}}}<tool_call|><|tool_response>"
    else:
        thought = THOUGHTS["answer"] if task.kind == "add" else THOUGHTS[task.kind]
        body = f"{task.expected_text}<turn|>"
    return (f"<|channel>thought\n{thought}<channel|>" if thinking else "") + body


def sample_example(
    rng: random.Random, chat: ChatFormat, mixture: dict[TaskKind, float] = MIXTURE, sort_max: int | None = None
) -> Example:
    """A random task with random presentation: thinking on or off, tool declarations varied, extra tools offered.

    `sort_max` caps the sort lists' length (2 to `sort_max` numbers, uniform): a length curriculum.
    """
    kind: TaskKind = rng.choices(list(mixture), weights=list(mixture.values()))[0]
    task = sort_task(rng, length=rng.randint(2, sort_max)) if kind == "sort" and sort_max else sample_task(rng, kind)
    thinking = rng.random() < 0.3
    tools = [_varied_add_tool(rng)] if task.tools or rng.random() < 0.15 else []
    if tools and rng.random() < 0.15:
        tools.insert(rng.randrange(2), rng.choice(_OTHER_TOOLS))
    messages = task.messages
    if rng.random() < 0.1:
        messages = [Message(role="system", content="You are a helpful assistant."), *messages]
    task = replace(task, messages=messages)
    prompt = chat.encode(chat.render(task.messages, tools=tools, thinking=thinking))
    return Example(prompt=prompt, answer=chat.encode(completion_text(task, thinking)))


def _varied_add_tool(rng: random.Random) -> Tool:
    """The `add` tool as different apps might declare it (the model must not depend on the wording)."""
    description = rng.choice(_DESCRIPTIONS)
    if rng.random() < 0.2:
        description = " ".join(rng.choices(_FILLER, k=rng.randint(1, 6))).capitalize() + "."
    parameters = ADD_TOOL.parameters
    if rng.random() < 0.3:
        parameters = {
            **parameters,
            "properties": {
                name: {**schema, "description": rng.choice(["The first number.", "The second number.", "An integer."])}
                for name, schema in parameters["properties"].items()
            },
        }
    return Tool(name="add", description=description, parameters=parameters)


def canvas_example(
    example: Example, rng: random.Random, canvas_length: int, pad_id: int
) -> tuple[list[int], list[int], int]:
    """One canvas of an example, chosen at random.

    Returns the encoder input ids, the target canvas ids and how many answer tokens the encoder input ends with.
    """
    canvases = -(-len(example.answer) // canvas_length)
    index = rng.randrange(canvases)
    start = index * canvas_length
    target = example.answer[start : start + canvas_length]
    return example.prompt + example.answer[:start], target + [pad_id] * (canvas_length - len(target)), start


def copy_example(rng: random.Random, chat: ChatFormat, canvas_length: int) -> Example:
    """A dense copy exercise (no chat turn): the canvas is the last `canvas_length` of the prompt's items.

    Every slot reads at the same distance, and the items are numbers 0 to 198 or the reverse task's words, written
    with or without their leading space. The exercise teaches the value paths that copy a token, or turn ` 17` into
    `17`, with a signal on every slot; the demo tasks copy one or two such tokens an example and learn it slowly.
    """
    source, target = (_forms(chat)[form] for form in rng.choice(COPY_FORMS))
    picks = [rng.randrange(len(source)) for _ in range(rng.randint(canvas_length, canvas_length + 18))]
    prompt = chat.encode("<bos>") + [source[i] for i in picks] + chat.encode("<turn|>\n<|turn>model\n")
    return Example(prompt=prompt, answer=[target[i] for i in picks[-canvas_length:]])


@functools.cache
def _forms(chat: ChatFormat) -> dict[str, list[int]]:
    numbers, words = [str(n) for n in range(199)], list(WORDS)
    return {
        "spaced": [_single_token(chat, f" {n}") for n in numbers],
        "bare": [_single_token(chat, n) for n in numbers],
        "spaced word": [_single_token(chat, f" {w}") for w in words],
        "bare word": [_single_token(chat, w) for w in words],
    }


def _single_token(chat: ChatFormat, text: str) -> int:
    (token,) = chat.encode(text)  # the demo tokenizer makes every number and word one token, spaced or not
    return token
