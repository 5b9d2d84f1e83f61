"""The bundled demo model (`torch:demo`) end to end through the public client, and its shipped files."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from transformers import AutoTokenizer, DiffusionGemmaConfig

from diffusiongemma_sdk import AsyncDiffusionGemma, Message
from diffusiongemma_torch._chat import ChatFormat
from diffusiongemma_torch.demo import DEMO_DIR
from diffusiongemma_torch.demo.tasks import WORDS, add, add_task, sort_task

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def demo() -> AsyncDiffusionGemma:
    async with AsyncDiffusionGemma("torch:demo") as client:
        yield client


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


# The shipped model reverses and adds right (100% on held-out prompts) but does not sort every list right
# (docs/demo-model.md, "Status"): a random long sort answer is checked for its form here, the demo's own list for its
# exact answer; evals/demo_tasks.py measures them all.
NUMBERS = re.compile(r"^\d+( \d+)*$")
DEMO_PROMPT = re.search(r"^DEMO_PROMPT \?= (.+)$", (Path(__file__).parents[1] / "Makefile").read_text(), re.M)


async def test_sort_request_gets_the_sorted_list_and_stops_early(demo: AsyncDiffusionGemma) -> None:
    # the demo model sorts this list at most seeds, not all: 9 of seeds 0-9 (docs/demo-model.md); 1 is one of them
    generation = await demo.generate("Sort these numbers: 17 4 9", seed=1)
    assert generation.text == "4 9 17"
    assert generation.finish_reason == "stop"
    usage = generation.usage
    assert usage.canvases == 1
    assert usage.denoising_steps is not None
    assert usage.denoising_steps < 32  # the adaptive stop ended the canvas before the step cap


async def test_long_list_spans_several_canvases(demo: AsyncDiffusionGemma) -> None:
    task = sort_task(random.Random(4), length=40)
    generation = await demo.generate(task.messages, seed=1)
    assert NUMBERS.match(generation.text)
    canvas = DiffusionGemmaConfig.from_pretrained(DEMO_DIR).canvas_length
    assert generation.usage.canvases == -(-41 // canvas)  # 40 numbers and the stop token


@pytest.mark.xfail(
    strict=True,
    reason="issue 19 is blocked: the model does not sort lists of 20 or more numbers (docs/demo-model.md), so "
    "DEMO_PROMPT stays short; set a long one when a model sorts it",
)
async def test_make_demo_list_is_sorted_across_two_canvases(demo: AsyncDiffusionGemma) -> None:
    assert DEMO_PROMPT is not None
    prompt = DEMO_PROMPT.group(1)
    numbers = [int(n) for n in prompt.removeprefix("Sort these numbers: ").split()]
    assert len(numbers) >= 20
    generation = await demo.generate(prompt, seed=0)
    assert generation.text == " ".join(map(str, sorted(numbers)))
    assert generation.usage.canvases == 2


async def test_reverse_request_gets_words_of_the_list(demo: AsyncDiffusionGemma) -> None:
    generation = await demo.generate("Reverse these words: red green blue", seed=0)
    assert generation.text == "blue green red"
    assert generation.finish_reason == "stop"


async def test_tool_call_round_trip(demo: AsyncDiffusionGemma) -> None:
    question = Message(role="user", content="What is 12 + 30?")
    first = await demo.generate([question], tools=[add], seed=0)
    assert first.finish_reason == "tool_calls"
    [call] = first.tool_calls
    assert call.name == "add"
    assert call.arguments == {"a": 12, "b": 30}
    result = Message(role="tool", content=str(add(**call.arguments)), tool_call_id=call.id)
    final = await demo.generate([question, first.to_message(), result], tools=[add], seed=0)
    assert final.text == "42"
    assert not final.tool_calls


async def test_thinking_lands_in_reasoning(demo: AsyncDiffusionGemma) -> None:
    generation = await demo.generate("Reverse these words: red green blue", thinking=True, seed=0)
    assert generation.reasoning == "I will reverse the words."
    assert generation.text == "blue green red"


def test_shipped_files_are_small_and_use_the_real_layout() -> None:
    shipped = sum(path.stat().st_size for path in DEMO_DIR.iterdir() if path.is_file())
    assert shipped <= 10 * 2**20
    config = DiffusionGemmaConfig.from_pretrained(DEMO_DIR)
    assert {"sliding_attention", "full_attention"} <= set(config.text_config.layer_types)
    assert config.text_config.num_experts > 1


def test_tokenizer_loads_with_transformers_and_renders_like_the_engine() -> None:
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR)
    chat = ChatFormat.from_directory(DEMO_DIR)
    task = add_task(random.Random(0), answered_call=True)
    ours = chat.render(task.messages, tools=task.tools, thinking=True)
    messages = [
        {"role": "user", "content": task.messages[0].text},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in task.messages[1].tool_calls
            ],
        },
        {"role": "tool", "name": "add", "content": task.messages[2].text},
    ]
    tools = [{"type": "function", "function": tool.model_dump()} for tool in task.tools]
    theirs = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert theirs == ours
    assert tokenizer.encode(ours, add_special_tokens=False) == chat.encode(ours)
    for token in ("<bos>", "<eos>", "<pad>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>",
                  "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'):  # fmt: skip
        assert chat.token_id(token) is not None, token


def test_contract_prompts_encode_without_unknown_tokens() -> None:
    chat = ChatFormat.from_directory(DEMO_DIR)
    unknown = chat.token_id("<unk>")
    prompts = ["Sort these numbers: " + " ".join(map(str, range(100))), "Reverse these words: " + " ".join(WORDS)]
    prompts += [f"What is {a} + {b}?" for a in range(0, 100, 7) for b in range(0, 100, 11)]
    for prompt in prompts:
        assert unknown not in chat.encode(prompt)
    assert len(chat.encode(" ".join(map(str, range(100))))) == 100  # one token per number
