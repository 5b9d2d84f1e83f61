"""`diffusiongemma_sdk.testing`: the backend application tests use, through the public client and the blocking twin."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from diffusiongemma_sdk import (
    AsyncDiffusionGemma,
    CanvasEvent,
    ConfigurationError,
    DiffusionGemma,
    Generation,
    GenerationRequest,
    RateLimitError,
    ToolCall,
    UnsupportedParameterError,
)
from diffusiongemma_sdk._remote import NIM_CAPABILITIES
from diffusiongemma_sdk.testing import ScriptError, TestBackend, example_value

pytestmark = pytest.mark.anyio


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_a_scripted_tool_round_trip_and_what_the_backend_received() -> None:
    backend = TestBackend(
        [
            RateLimitError("slow down", status_code=429, retry_after=0),  # retried by the client
            Generation(tool_calls=[ToolCall(id="call_1", name="add", arguments={"a": 12, "b": 30})]),
            "The sum is 42.",
        ]
    )
    async with AsyncDiffusionGemma(backend) as client:
        messages: list[object] = [{"role": "user", "content": "What is 12 + 30?"}]
        first = await client.generate(messages, tools=[add], tool_choice="required", max_retries=1)
        assert first.finish_reason == "tool_calls"
        messages += [first.to_message()] + [
            {"role": "tool", "tool_call_id": call.id, "content": str(add(**call.arguments))}
            for call in first.tool_calls
        ]
        answer = await client.generate(messages, tools=[add])
    assert answer.text == "The sum is 42."
    assert [request.tool_choice for request in backend.requests] == ["required", "required", None]
    assert backend.requests[-1].messages[-1].tool_call_id == "call_1"
    assert backend.requests[0].max_retries == 1  # the client's defaults are filled in before the backend sees it


async def test_running_out_of_script_and_contradicting_the_request_are_clear_errors() -> None:
    async with AsyncDiffusionGemma(TestBackend([Generation(tool_calls=[ToolCall(name="add")])])) as client:
        with pytest.raises(ScriptError, match="tool_choice='none'"):
            await client.generate("q", tools=[add], tool_choice="none")
        with pytest.raises(ScriptError, match="no reply left"):
            await client.generate("q")


async def test_a_function_of_the_request_answers_sync_or_async() -> None:
    def shout(request: GenerationRequest) -> str:
        return request.messages[-1].text.upper()

    async def echo(request: GenerationRequest) -> str:
        return f"{request.max_tokens} tokens"

    async with AsyncDiffusionGemma(TestBackend(shout)) as loud, AsyncDiffusionGemma(TestBackend(echo)) as quiet:
        assert (await loud.generate("hello there")).text == "HELLO THERE"
        assert (await quiet.generate("q", max_tokens=7)).text == "7 tokens"


class Weather(BaseModel):
    city: str
    unit: Literal["C", "F"]
    days: list[int]


async def test_it_answers_by_itself_tools_results_and_schemas() -> None:
    async with AsyncDiffusionGemma("test") as client:
        call = await client.generate("What is 1 + 2?", tools=[add])
        assert [(c.name, c.arguments) for c in call.tool_calls] == [("add", {"a": 1, "b": 1})]
        result = {"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": "2"}
        question = {"role": "user", "content": "What is 1 + 2?"}
        after = await client.generate([question, call, result], tools=[add])
        assert (after.text, after.tool_calls) == ("2", [])
        parsed = (await client.generate("Weather?", response_model=Weather)).parsed
        assert parsed == Weather(city="a", unit="C", days=[1])
        assert (await client.generate("Hi")).text == "test answer"
    assert example_value({"anyOf": [{"type": "null"}, {"type": "integer"}]}) is None


async def test_streams_canvases_and_drafts_as_a_local_engine_does() -> None:
    client = AsyncDiffusionGemma(TestBackend(["a b c d e"], canvas_words=2))
    async with client, client.stream("q", drafts=True, diffusion={"max_denoising_steps": 2}) as stream:
        events = [event async for event in stream]
        final = await stream.final()
    assert [event.type for event in events] == [
        *["denoise_step", "denoise_step", "canvas"] * 3,
        "usage",
        "done",
    ]
    assert "".join(e.text_delta for e in events if isinstance(e, CanvasEvent)) == "a b c d e" == final.text
    assert (final.usage.canvases, final.usage.denoising_steps) == (3, 6)


async def test_capabilities_play_a_backend_that_lacks_something() -> None:
    async with AsyncDiffusionGemma(TestBackend(capabilities=NIM_CAPABILITIES)) as client:
        with pytest.raises(UnsupportedParameterError, match="diffusion"):
            await client.generate("q", diffusion={"max_denoising_steps": 2})


def test_spec_strings_and_the_blocking_client() -> None:
    with DiffusionGemma("test:4 9 17") as client:
        assert client.backend.name == "test:4 9 17"
        assert client.generate("Sort these numbers: 17 4 9").text == "4 9 17"
        with client.stream("q") as stream:
            assert list(stream.text_stream) == ["4 9 17"]
    with pytest.raises(ConfigurationError, match="no backend_options"):
        DiffusionGemma("test", backend_options={"event_delay": 1})
