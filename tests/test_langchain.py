"""`ChatDiffusionGemma` beyond the standard suites: the SDK contract under LangChain, what only a diffusion model gives
an agent (drafts, effort, batching, self-consistency, effort escalation), and agents end to end on the demo model,
in process and through a real `serve` process."""

from __future__ import annotations

import asyncio
import json
import operator
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import pytest

pytest.importorskip("langchain")
pytest.importorskip("langgraph")

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.runnables import ConfigurableField, RunnableLambda, RunnableParallel
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from pydantic import BaseModel
from typing_extensions import TypedDict

from diffusiongemma_sdk import (
    AsyncDiffusionGemma,
    DiffusionParams,
    Generation,
    GenerationRequest,
    ToolCall,
    UnsupportedParameterError,
    UnsupportedParameterWarning,
)
from diffusiongemma_sdk._remote import NIM_CAPABILITIES
from diffusiongemma_sdk.testing import TEST_CAPABILITIES, TestBackend
from diffusiongemma_torch.demo.tasks import add
from langchain_diffusiongemma import DRAFT_EVENT, ChatDiffusionGemma, EffortEscalationMiddleware, self_consistency
from tests.support.serving import serve_command

pytestmark = pytest.mark.anyio


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def model_on(backend: TestBackend, **fields: Any) -> ChatDiffusionGemma:
    return ChatDiffusionGemma(AsyncDiffusionGemma(backend), **fields)


@pytest.fixture(scope="module")
def demo() -> Iterator[ChatDiffusionGemma]:
    model = ChatDiffusionGemma("torch:demo", seed=0, backend_options={"max_batch": 8})
    yield model
    model.close()


def batch_sizes(model: ChatDiffusionGemma) -> dict[int, int]:
    client = model._thread().client
    assert client is not None
    return dict(client.backend.batch_sizes)  # type: ignore[attr-defined]


def widest_pass_since(model: ChatDiffusionGemma, before: dict[int, int]) -> int:
    """The most requests one denoising pass carried since `before` (the engine's passes by size)."""
    new = Counter(batch_sizes(model)) - Counter(before)
    return max(new, default=0)


class HeldEngine:
    """The engine's next step is held until `count` requests wait, then they start in one pass, however the threads
    and tasks that sent them were scheduled on a busy machine (on an idle engine, the scheduler's admission window
    does the same in practice)."""

    def __init__(self, model: ChatDiffusionGemma, count: int) -> None:
        if model._thread().client is None:
            model.invoke("Reverse these words: red green")  # the client and its engine exist from here on
        client = model._thread().client
        assert client is not None
        self.scheduler: Any = client.backend._scheduler  # type: ignore[attr-defined]
        self.count = count
        self.released = threading.Event()
        step = self.scheduler._step

        def held() -> None:
            self.released.wait(60)
            step()

        self.scheduler._step = held  # this scheduler's next steps wait for the release

    def release_when_waiting(self) -> None:
        deadline = time.monotonic() + 60
        while len(self.scheduler.waiting) < self.count:
            assert time.monotonic() < deadline, "the requests never all waited"
            time.sleep(0.005)
        del self.scheduler._step
        self.released.set()


async def fanned_out(model: ChatDiffusionGemma, count: int, send: Callable[[], Awaitable[Any]]) -> Any:
    """`await send()` with the engine held until its `count` requests wait."""
    held = HeldEngine(model, count)
    sending = asyncio.ensure_future(send())
    await asyncio.to_thread(held.release_when_waiting)
    return await sending


def fanned_out_sync(model: ChatDiffusionGemma, count: int, send: Callable[[], Any]) -> Any:
    """`send()` (in a thread) with the engine held until its `count` requests wait."""
    held = HeldEngine(model, count)
    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(send)
        held.release_when_waiting()
        return sending.result()


# --- construction, identity, profile --------------------------------------------------------------------------------


def test_nothing_is_loaded_or_asked_before_the_first_call() -> None:
    missing = ChatDiffusionGemma("torch:/no/such/checkpoint")  # loads nothing yet
    nim = ChatDiffusionGemma("nim", api_key="nvapi-secret-123")  # asks nothing yet
    assert nim.profile is not None
    assert (nim.profile["structured_output"], nim.profile["max_input_tokens"]) == (False, 262_144)
    assert "nvapi-secret-123" not in repr(nim) + str(nim) + json.dumps(nim._identifying_params)
    with pytest.raises(Exception, match="no/such/checkpoint"):
        missing.invoke("hi")


def test_the_profile_follows_the_backend_once_it_is_loaded(demo: ChatDiffusionGemma) -> None:
    demo.invoke("Reverse these words: red green blue")
    demo.invoke("Reverse these words: red green blue")
    assert demo.profile is not None
    assert demo.profile["max_input_tokens"] == 4096  # the checkpoint's context window
    assert demo.profile["tool_calling"]
    assert not demo.profile["structured_output"]  # so create_agent picks the tool strategy
    assert demo._get_ls_params(model="other")["ls_model_name"] == "other"


def test_temperature_goes_through_the_unsupported_policy() -> None:
    with pytest.raises(UnsupportedParameterError, match="temperature"):
        ChatDiffusionGemma("test", temperature=0).invoke("hi")
    with pytest.warns(UnsupportedParameterWarning, match="temperature"):
        assert ChatDiffusionGemma("test", temperature=0, unsupported="warn").invoke("hi").content == "test answer"


# --- messages, streams, usage ---------------------------------------------------------------------------------------


def test_reasoning_usage_and_diffusion_statistics_once_on_the_last_chunk(demo: ChatDiffusionGemma) -> None:
    chunks = list(demo.stream("Reverse these words: red green blue", thinking=True))
    assert sum(1 for chunk in chunks if chunk.usage_metadata) == 1
    assert chunks[-1].usage_metadata
    assert chunks[-1].chunk_position == "last"
    whole: AIMessageChunk = sum(chunks[1:], chunks[0])  # type: ignore[assignment]
    assert whole.content == "blue green red"
    assert whole.additional_kwargs["reasoning_content"] == "I will reverse the words."
    assert [block["type"] for block in whole.content_blocks] == ["reasoning", "text"]
    metadata = whole.response_metadata
    assert (metadata["model_name"], metadata["model_provider"], metadata["finish_reason"]) == (
        "torch:demo",
        "diffusiongemma",
        "stop",
    )
    assert set(metadata["diffusion"]) >= {"canvases", "denoising_steps", "tokens_per_forward", "ttft_s"}


async def test_tool_calls_stream_as_chunks(demo: ChatDiffusionGemma) -> None:
    bound = demo.bind_tools([add])
    chunks = [chunk async for chunk in bound.astream("What is 12 + 30?")]
    assert [c["name"] for chunk in chunks for c in chunk.tool_call_chunks] == ["add"]
    whole: AIMessageChunk = sum(chunks[1:], chunks[0])  # type: ignore[assignment]
    assert [(call["name"], call["args"]) for call in whole.tool_calls] == [("add", {"a": 12, "b": 30})]


def test_every_tool_choice_form_reaches_the_backend() -> None:
    backend = TestBackend()
    model = model_on(backend)
    forms: list[Any] = [
        "add",
        "auto",
        "none",
        "any",
        "required",
        True,
        {"type": "function", "function": {"name": "multiply"}},
    ]
    for form in forms:
        model.bind_tools([add, multiply], tool_choice=form).invoke("What is 2 + 3?")
    assert [request.tool_choice for request in backend.requests] == [
        "add",
        "auto",
        "none",
        "required",
        "required",
        "required",
        "multiply",
    ]
    with pytest.raises(ValueError, match="not one of the bound tools"):
        model.bind_tools([add], tool_choice="divide")


def test_parallel_tool_calls_and_strict_arguments() -> None:
    two_calls = Generation(
        tool_calls=[ToolCall(name="add", arguments={"a": 1, "b": "two"}), ToolCall(name="add", arguments={"a": 3})]
    )
    model = model_on(TestBackend([two_calls, two_calls]))
    first_only = model.bind_tools([add], parallel_tool_calls=False).invoke("q")
    assert [call["args"] for call in first_only.tool_calls] == [{"a": 1, "b": "two"}]
    strict = model.bind_tools([add], strict=True).invoke("q")
    assert strict.tool_calls == []
    assert [call["error"] for call in strict.invalid_tool_calls] == [
        "The arguments do not match add's schema: $.b: must be of type integer, not str",
        "The arguments do not match add's schema: $: missing required field(s) b",
    ]


# --- structured output ------------------------------------------------------------------------------------------------


class Sum(BaseModel):
    a: int
    b: int
    total: int


class SumDict(TypedDict):
    a: int
    total: int


def test_structured_output_methods_and_include_raw() -> None:
    model = model_on(TestBackend())
    assert model.with_structured_output(Sum).invoke("12 + 30") == Sum(a=1, b=1, total=1)
    assert model.with_structured_output(SumDict, method="json_mode").invoke("q") == {"a": 1, "total": 1}
    assert model.with_structured_output(Sum, method="function_calling").invoke("q") == Sum(a=1, b=1, total=1)
    raw = model.with_structured_output(Sum.model_json_schema(), include_raw=True).invoke("q")
    assert raw["parsed"] == {"a": 1, "b": 1, "total": 1}
    assert raw["parsing_error"] is None
    assert isinstance(raw["raw"], AIMessage)


def test_structured_output_re_asks_then_reports_the_failure() -> None:
    backend = TestBackend(['{"a": 12}', '{"a": 12, "b": 30, "total": 42}', "no", "no"])
    model = model_on(backend, max_validation_retries=1)
    assert model.with_structured_output(Sum).invoke("12 + 30") == Sum(a=12, b=30, total=42)
    assert "b: Field required" in backend.requests[1].messages[-1].text  # the re-ask carries the validation error
    failed = model.with_structured_output(Sum, include_raw=True).invoke("12 + 30")
    assert failed["parsed"] is None
    assert "did not match Sum after 2 attempt(s)" in str(failed["parsing_error"])
    assert failed["raw"].content == "no"


# --- drafts ---------------------------------------------------------------------------------------------------------


async def test_drafts_are_custom_events_of_the_models_own_run(demo: ChatDiffusionGemma) -> None:
    chain = RunnableLambda(lambda text: text) | demo.bind(drafts=True)
    events = [event async for event in chain.astream_events("Reverse these words: red green blue", version="v2")]
    [model_run] = {event["run_id"] for event in events if event["event"] == "on_chat_model_start"}
    drafts = [event for event in events if event["event"] == "on_custom_event"]
    assert drafts
    assert {(event["name"], event["run_id"]) for event in drafts} == {(DRAFT_EVENT, model_run)}
    assert set(drafts[0]["data"]) == {"canvas", "step", "draft_text", "accepted_fraction", "mean_entropy"}
    streamed = "".join(e["data"]["chunk"].text for e in events if e["event"] == "on_chat_model_stream")
    assert streamed == "blue green red"  # the answer, and no draft in it
    plain = [event async for event in chain.astream_events("Reverse these words: red green blue", version="v2")]
    assert len([e for e in plain if e["event"] == "on_custom_event"]) == len(drafts)  # bind(drafts=True) kept


def test_drafts_reach_langgraphs_custom_stream() -> None:
    model = ChatDiffusionGemma("torch:demo", drafts=True, seed=0)

    class State(TypedDict):
        answer: str

    def answer(state: State) -> State:
        return {"answer": model.invoke("Reverse these words: red green blue").text}

    graph = StateGraph(State).add_node(answer).add_edge(START, "answer").add_edge("answer", END).compile()
    parts = list(graph.stream({"answer": ""}, stream_mode=["custom", "values"]))
    drafts = [data for mode, data in parts if mode == "custom"]
    assert drafts
    assert {draft["event"] for draft in drafts} == {DRAFT_EVENT}
    assert [data["answer"] for mode, data in parts if mode == "values"][-1] == "blue green red"
    model.close()


# --- effort ---------------------------------------------------------------------------------------------------------


def test_effort_per_call_by_bind_and_as_a_configurable_field() -> None:
    backend = TestBackend()
    model = model_on(backend, effort="low")
    model.invoke("q")
    model.invoke("q", effort="instant")
    model.bind(effort="high").invoke("q")
    configurable = model.configurable_fields(effort=ConfigurableField(id="effort"))
    configurable.with_config(configurable={"effort": "medium"}).invoke("q")
    model.invoke("q", effort="instant", diffusion={"max_denoising_steps": 6})  # explicit settings win
    steps = [None if r.diffusion is None else r.diffusion.max_denoising_steps for r in backend.requests]
    assert steps == [12, 4, 64, None, 6]


def test_effort_is_refused_by_name_where_diffusion_settings_are_not_honoured() -> None:
    model = model_on(TestBackend(capabilities=NIM_CAPABILITIES))
    with pytest.raises(UnsupportedParameterError, match="effort='high'") as info:
        model.invoke("q", effort="high")
    assert info.value.parameter == "effort"
    assert model.invoke("q", effort="medium").content == "test answer"  # the backend's own settings: honoured


# --- batching ---------------------------------------------------------------------------------------------------------


SORTS = [f"Sort these numbers: {n} 4 9" for n in (3, 5, 7, 11)]


async def test_abatch_and_runnable_parallel_reach_the_engine_as_one_batch(demo: ChatDiffusionGemma) -> None:
    parallel = RunnableParallel({str(i): RunnableLambda(lambda _, p=p: p) | demo for i, p in enumerate(SORTS)})
    sends: list[Callable[[], Awaitable[Any]]] = [
        lambda: demo.abatch(SORTS),
        lambda: parallel.ainvoke(None),
        lambda: asyncio.to_thread(demo.batch, SORTS),  # the sync path: LangChain's thread pool
    ]
    for send in sends:
        before = batch_sizes(demo)
        assert len(await fanned_out(demo, 4, send)) == 4
        assert widest_pass_since(demo, before) == 4


class FanOut(TypedDict):
    prompts: list[str]
    answers: Annotated[list[str], operator.add]


class OnePrompt(TypedDict):
    prompt: str


def test_langgraph_send_fan_out_reaches_the_engine_as_one_batch(demo: ChatDiffusionGemma) -> None:
    def fan_out(state: FanOut) -> list[Send]:
        return [Send("solve", {"prompt": prompt}) for prompt in state["prompts"]]

    def solve(state: OnePrompt) -> dict[str, list[str]]:
        return {"answers": [demo.invoke(state["prompt"]).text]}

    graph = StateGraph(FanOut)
    graph.add_node("solve", solve)
    graph.add_conditional_edges(START, fan_out, ["solve"])
    graph.add_edge("solve", END)
    before = batch_sizes(demo)
    compiled = graph.compile()
    result = fanned_out_sync(demo, 4, lambda: compiled.invoke({"prompts": SORTS, "answers": []}))
    assert len(result["answers"]) == 4
    assert widest_pass_since(demo, before) == 4


async def test_self_consistency_votes_over_one_batch_of_seeded_samples(demo: ChatDiffusionGemma) -> None:
    before = batch_sizes(demo)
    voting = self_consistency(demo, n=5, seed=10)
    voted = await fanned_out(demo, 5, lambda: voting.ainvoke("Sort these numbers: 8 3 5"))
    assert widest_pass_since(demo, before) == 5
    tally = voted.response_metadata["self_consistency"]
    assert tally["seeds"] == [10, 11, 12, 13, 14]
    assert sum(tally["votes"].values()) == 5
    assert tally["winner"] == voted.text.strip() == max(tally["votes"], key=tally["votes"].get)


# --- agents -----------------------------------------------------------------------------------------------------------


def run_add_agent(model: ChatDiffusionGemma) -> list[Any]:
    """The application code, the same for every backend."""
    agent = create_agent(model, tools=[add])
    return list(agent.invoke({"messages": [HumanMessage("What is 12 + 30?")]})["messages"])


def check_add_agent(messages: list[Any]) -> None:
    call, result, answer = messages[1], messages[2], messages[3]
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [("add", {"a": 12, "b": 30})]
    assert result.content == "42"
    assert answer.text == "42"


def test_an_agent_calls_the_tool_and_answers_on_the_demo_model(demo: ChatDiffusionGemma) -> None:
    check_add_agent(run_add_agent(demo))


@pytest.mark.timeout(120)
def test_the_same_agent_runs_unchanged_against_a_serve_process() -> None:
    with serve_command("torch:demo") as running:
        model = ChatDiffusionGemma(f"openai:{running.base}", seed=0)
        check_add_agent(run_add_agent(model))
        model.close()


def test_effort_escalation_middleware_re_asks_until_the_validator_passes() -> None:
    def careful_only(request: GenerationRequest) -> str:
        steps = request.diffusion.max_denoising_steps if request.diffusion else None
        return "42" if steps == 64 else "41"

    backend = TestBackend(careful_only)
    middleware = EffortEscalationMiddleware(lambda message: message.text == "42" or "wrong sum")
    agent = create_agent(model_on(backend, effort="low"), middleware=[middleware])
    answer = agent.invoke({"messages": [HumanMessage("What is 12 + 30?")]})["messages"][-1]
    assert answer.text == "42"
    efforts = [None if r.diffusion is None else r.diffusion.max_denoising_steps for r in backend.requests]
    assert efforts == [12, None, 64]  # low, medium (the backend's defaults), high
    assert [f["effort"] for f in answer.response_metadata["effort_escalation"]] == ["low", "medium"]


def test_effort_escalation_middleware_re_asks_when_the_schema_fails() -> None:
    def careful_json(request: GenerationRequest) -> Generation:
        steps = request.diffusion.max_denoising_steps if request.diffusion else None
        arguments = {"a": 12, "b": 30, "total": 42} if steps == 64 else {"a": "twelve"}
        return Generation(tool_calls=[ToolCall(name="Sum", arguments=arguments)])

    prompted = TEST_CAPABILITIES.model_copy(update={"native_structured_output": False})  # so: the tool strategy
    backend = TestBackend(careful_json, capabilities=prompted)
    agent = create_agent(model_on(backend), response_format=Sum, middleware=[EffortEscalationMiddleware()])
    result = agent.invoke({"messages": [HumanMessage("What is 12 + 30?")]})
    assert result["structured_response"] == Sum(a=12, b=30, total=42)
    assert len(backend.requests) == 2  # medium failed the schema, high passed


def test_diffusion_settings_as_a_field() -> None:
    backend = TestBackend()
    model_on(backend, diffusion=DiffusionParams(max_denoising_steps=7)).invoke("q")
    assert backend.requests[0].diffusion == DiffusionParams(max_denoising_steps=7)


async def test_concurrent_sync_and_async_calls_share_one_client() -> None:
    first, second = ChatDiffusionGemma("test:same"), ChatDiffusionGemma("test:same")
    assert first._thread() is second._thread()
    answers = await asyncio.gather(first.ainvoke("a"), asyncio.to_thread(second.invoke, "b"))
    assert [a.content for a in answers] == ["same", "same"]
