"""Real clients against `diffusiongemma serve --backend torch:demo`, checked against the demo tasks' right answers.

The server is the program itself (a subprocess on a free port). The clients are openai-python's `AsyncOpenAI`,
LangChain's `ChatOpenAI` (with what it sends by default, and with the `temperature` its users habitually set) and this
SDK's own `openai:` backend. The prompts are the demo tasks' exact formats (docs/demo-model.md).

Two checks per answer. First, it is exactly the answer the torch engine gives in this process for the same messages,
tools and seed (text, tool calls, reasoning, token count): the server and the client add and lose nothing, whatever
the model knows. Second, it is the task's right answer (`4 9 17`, `add(12, 30)`, `42`, the thought); where the shipped
demo model does not give that answer itself yet, this second check is an expected failure (xfail) that says so, and
it turns into a plain check as soon as the model answers right.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")  # the demo checkpoint is saved in transformers' layout

from openai import AsyncOpenAI, DefaultAsyncHttpxClient

from diffusiongemma_sdk import AsyncDiffusionGemma, DiffusionGemma, Generation, Message, Tool
from diffusiongemma_torch.demo.tasks import add
from tests.support.serving import ADD_TOOL, ServeCommand, serve_command

pytestmark = pytest.mark.anyio

SORT = "Sort these numbers: 17 4 9"
ADD = "What is 12 + 30?"
SEED = 1  # a seed at which the demo model sorts SORT (it does at 9 of seeds 0-9; 0 is not one of them)


@dataclass(frozen=True)
class Reference:
    """The engine's own answers (in this process, same seed) to what the clients send."""

    sort: Generation
    thought: Generation
    call: Generation
    answer: Generation  # after the call above and its result


def tool_result(arguments: dict[str, Any]) -> str:
    return str(add(**arguments))


@pytest.fixture(scope="module")
def reference() -> Reference:
    tool = Tool(name="add", description="Add two integers.", parameters=ADD_TOOL["function"]["parameters"])
    with DiffusionGemma("torch:demo") as engine:
        call = engine.generate(ADD, tools=[tool], seed=SEED)
        assert len(call.tool_calls) == 1, "the demo model makes one call (the protocol it has learnt)"
        made = call.tool_calls[0]
        result = Message(role="tool", content=tool_result(made.arguments), tool_call_id=made.id)
        return Reference(
            sort=engine.generate(SORT, seed=SEED),
            thought=engine.generate(SORT, thinking=True, seed=SEED),
            call=call,
            answer=engine.generate(
                [Message(role="user", content=ADD), call.to_message(), result], tools=[tool], seed=SEED
            ),
        )


def right(engine_answer: Any, expected: Any, what: str) -> None:
    """The task's right answer: a check where the engine gives it, else an expected failure saying so."""
    if engine_answer != expected:
        pytest.xfail(
            f"the shipped demo model {what} {engine_answer!r}, not {expected!r}; "
            "the server returned exactly the engine's own answer"
        )


def calls_of(generation: Generation) -> list[tuple[str, dict[str, Any]]]:
    return [(call.name, call.arguments) for call in generation.tool_calls]


@pytest.fixture(scope="module")
def demo_server() -> Iterator[ServeCommand]:
    with serve_command("torch:demo") as running:
        yield running


def openai_client(server: ServeCommand) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.base, api_key="unused", max_retries=0, timeout=60)


# --- openai-python --------------------------------------------------------------------------------------------------


async def test_openai_client_sorts(demo_server: ServeCommand, reference: Reference) -> None:
    async with openai_client(demo_server) as client:
        models = await client.models.list()
        assert [model.id for model in models.data] == [demo_server.model] == ["torch:demo"]
        answer = await client.chat.completions.create(
            model=demo_server.model, messages=[{"role": "user", "content": SORT}], seed=SEED
        )
        stream = await client.chat.completions.create(
            model=demo_server.model,
            messages=[{"role": "user", "content": SORT}],
            seed=SEED,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert answer.choices[0].message.content == reference.sort.text
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == reference.sort.usage.completion_tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == reference.sort.text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    right(reference.sort.text, "4 9 17", "sorts 17 4 9 as")


async def test_openai_client_tool_round_trip(demo_server: ServeCommand, reference: Reference) -> None:
    messages: list[Any] = [{"role": "user", "content": ADD}]
    async with openai_client(demo_server) as client:
        first = await client.chat.completions.create(
            model=demo_server.model, messages=messages, tools=[ADD_TOOL], seed=SEED
        )
        assert first.choices[0].finish_reason == "tool_calls"
        [call] = first.choices[0].message.tool_calls or []
        assert call.type == "function"
        arguments = json.loads(call.function.arguments)
        assert [(call.function.name, arguments)] == calls_of(reference.call)
        messages += [
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": tool_result(arguments)},
        ]
        second = await client.chat.completions.create(
            model=demo_server.model, messages=messages, tools=[ADD_TOOL], seed=SEED
        )
    assert second.choices[0].message.content == reference.answer.text
    assert not second.choices[0].message.tool_calls
    assert second.choices[0].finish_reason == "stop"
    right(calls_of(reference.call), [("add", {"a": 12, "b": 30})], "answers 'What is 12 + 30?' with the call")
    right(reference.answer.text, "42", "answers the tool's 42 with")


# --- LangChain's ChatOpenAI -----------------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[Any]:
    """An HTTP client of the test's own: LangChain's default one is cached process-wide, across event loops."""
    async with DefaultAsyncHttpxClient() as client:
        yield client


def chat_openai(server: ServeCommand, http: Any, **options: Any) -> Any:
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(
        base_url=server.base,
        api_key="x",
        model=server.model,
        max_retries=0,
        timeout=60,
        http_async_client=http,
        **options,
    )


async def test_langchain_invoke_and_stream(demo_server: ServeCommand, reference: Reference, http: Any) -> None:
    plain = chat_openai(demo_server, http, seed=SEED)  # LangChain's defaults
    assert (await plain.ainvoke(SORT)).content == reference.sort.text
    # what LangChain users habitually set: a temperature (accepted and ignored), streamed usage
    habitual = chat_openai(demo_server, http, seed=SEED, temperature=0, top_p=1, stream_usage=True)
    assert (await habitual.ainvoke(SORT)).content == reference.sort.text
    chunks = [chunk async for chunk in habitual.astream(SORT)]
    assert "".join(str(chunk.content) for chunk in chunks).strip() == reference.sort.text
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert usage
    assert usage[-1]["output_tokens"] == reference.sort.usage.completion_tokens
    right(reference.sort.text, "4 9 17", "sorts 17 4 9 as")


async def test_langchain_bind_tools_round_trip(demo_server: ServeCommand, reference: Reference, http: Any) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool("add")
    def add_tool(a: int, b: int) -> int:
        """Add two integers."""
        return add(a, b)

    llm = chat_openai(demo_server, http, seed=SEED, temperature=0).bind_tools([add_tool])
    messages: list[Any] = [HumanMessage(ADD)]
    first = await llm.ainvoke(messages)
    assert [(call["name"], call["args"]) for call in first.tool_calls] == calls_of(reference.call)
    call = first.tool_calls[0]
    messages += [first, ToolMessage(content=str(add_tool.invoke(call["args"])), tool_call_id=call["id"])]
    second = await llm.ainvoke(messages)
    assert second.content == reference.answer.text
    assert not second.tool_calls
    right(calls_of(reference.call), [("add", {"a": 12, "b": 30})], "answers 'What is 12 + 30?' with the call")
    right(reference.answer.text, "42", "answers the tool's 42 with")


# --- this SDK's own openai: backend ---------------------------------------------------------------------------------


async def test_sdk_client_sorts_calls_tools_and_thinks(demo_server: ServeCommand, reference: Reference) -> None:
    async with AsyncDiffusionGemma(f"openai:{demo_server.base}") as client:
        assert (await client.generate(SORT, seed=SEED)).text == reference.sort.text

        question = [Message(role="user", content=ADD)]
        first = await client.generate(question, tools=[add], seed=SEED)
        assert calls_of(first) == calls_of(reference.call)
        assert first.finish_reason == "tool_calls"
        results = [Message(role="tool", content=tool_result(c.arguments), tool_call_id=c.id) for c in first.tool_calls]
        second = await client.generate([*question, first.to_message(), *results], tools=[add], seed=SEED)
        assert second.text == reference.answer.text
        assert not second.tool_calls

        thought = await client.generate(SORT, thinking=True, seed=SEED)
        assert (thought.reasoning, thought.text) == (reference.thought.reasoning, reference.thought.text)
        async with client.stream(SORT, thinking=True, seed=SEED) as stream:
            streamed = await stream.final()
        assert (streamed.reasoning, streamed.text) == (reference.thought.reasoning, reference.thought.text)
    right(reference.thought.reasoning, "I will sort the numbers.", "thinks")
    right((reference.sort.text, reference.thought.text), ("4 9 17", "4 9 17"), "sorts 17 4 9 as")
    right(calls_of(reference.call), [("add", {"a": 12, "b": 30})], "answers 'What is 12 + 30?' with the call")
    right(reference.answer.text, "42", "answers the tool's 42 with")


# --- a batching server ----------------------------------------------------------------------------------------------


async def test_concurrent_openai_requests_to_a_batching_server_each_get_the_engine_answer(
    reference: Reference,
) -> None:
    """`serve -o max_batch=4`: requests sent at once (plain, streamed, thinking, tool call) are denoised together
    as they arrive, and each answer is still exactly the engine's own for its prompt and seed."""
    with serve_command("torch:demo", options=["-o", "max_batch=4"]) as server:
        async with openai_client(server) as client:
            models = await client.models.list()
            assert (models.data[0].model_extra or {})["capabilities"]["max_concurrency"] == 4
            user = [{"role": "user", "content": SORT}]

            async def streamed() -> str:
                stream = await client.chat.completions.create(
                    model=server.model,
                    messages=user,
                    seed=SEED,
                    stream=True,
                )
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]).strip()

            plain, thought, call, text = await asyncio.gather(
                client.chat.completions.create(model=server.model, messages=user, seed=SEED),
                client.chat.completions.create(
                    model=server.model,
                    messages=user,
                    seed=SEED,
                    extra_body={"chat_template_kwargs": {"enable_thinking": True}},
                ),
                client.chat.completions.create(
                    model=server.model,
                    messages=[{"role": "user", "content": ADD}],
                    tools=[ADD_TOOL],
                    seed=SEED,
                ),
                streamed(),
            )
    assert plain.choices[0].message.content == text == reference.sort.text
    assert thought.choices[0].message.content == reference.thought.text
    assert (thought.choices[0].message.model_extra or {})["reasoning"] == reference.thought.reasoning
    [made] = call.choices[0].message.tool_calls or []
    assert [(made.function.name, json.loads(made.function.arguments))] == calls_of(reference.call)
