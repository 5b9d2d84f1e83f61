from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from diffusiongemma_sdk import (
    CanvasEvent,
    DiffusionParams,
    DoneEvent,
    Generation,
    Message,
    StreamEvent,
    Tool,
    ToolCall,
)


def test_diffusion_params_all_optional_and_validated() -> None:
    assert DiffusionParams().is_empty()
    params = DiffusionParams(max_denoising_steps=12, entropy_bound=0.2, t_min=0.3, t_max=0.9, sampler="reference")
    assert not params.is_empty()
    assert params.stability_threshold is None
    with pytest.raises(ValidationError, match="t_max"):
        DiffusionParams(t_min=0.8, t_max=0.4)
    with pytest.raises(ValidationError, match="t_max"):
        DiffusionParams(t_min=0.5, t_max=0.5)
    for bad in ({"entropy_bound": 0}, {"max_denoising_steps": 0}, {"t_min": -0.1}, {"confidence_threshold": 0}):
        with pytest.raises(ValidationError):
            DiffusionParams(**bad)
    with pytest.raises(ValidationError, match="extra"):
        DiffusionParams(steps=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        DiffusionParams(sampler="fast")  # type: ignore[arg-type]


def test_message_rules() -> None:
    with pytest.raises(ValidationError, match="tool_call_id"):
        Message(role="tool", content="42")
    with pytest.raises(ValidationError, match="assistant"):
        Message(role="user", content="hi", tool_calls=[ToolCall(name="add")])
    with pytest.raises(ValidationError, match="images"):
        Message(role="system", content=[{"type": "image", "url": "https://x/y.png"}])  # type: ignore[list-item]
    message = Message(role="user", content=[{"type": "text", "text": "a"}, {"type": "image", "url": "data:x"}])  # type: ignore[list-item]
    assert message.text == "a"
    assert [image.url for image in message.images] == ["data:x"]


def test_stream_events_are_a_discriminated_union() -> None:
    adapter: TypeAdapter[StreamEvent] = TypeAdapter(StreamEvent)
    event = adapter.validate_python({"type": "canvas", "canvas_index": 2, "text_delta": "hi", "steps": 9})
    assert isinstance(event, CanvasEvent)
    assert event.steps == 9
    done = adapter.validate_json(DoneEvent(generation=Generation(text="x", backend="b")).model_dump_json())
    assert isinstance(done, DoneEvent)
    assert done.generation.text == "x"
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "nope"})


def test_generation_round_trips_to_an_assistant_message() -> None:
    call = ToolCall(name="add", arguments={"a": 1, "b": 2})
    message = Generation(text="", tool_calls=[call], finish_reason="tool_calls").to_message()
    assert message.role == "assistant"
    assert message.tool_calls == [call]
    assert call.id.startswith("call_")


def add(a: int, b: int = 0, *, unit: Literal["m", "s"] = "m") -> int:
    """Add two integers.

    A second paragraph.

    Args:
        a: The first number.
        b: The second number,
            which may be omitted.
        unit: Unit of the result.

    Returns:
        The sum.
    """
    return a + b


def test_tool_from_function_uses_signature_and_docstring() -> None:
    tool = Tool.from_function(add)
    assert tool.name == "add"
    assert tool.description == "Add two integers. A second paragraph."
    assert tool.parameters["required"] == ["a"]
    props = tool.parameters["properties"]
    assert props["a"] == {"type": "integer", "description": "The first number."}
    assert props["b"]["description"] == "The second number, which may be omitted."
    assert props["b"]["default"] == 0
    assert props["unit"]["enum"] == ["m", "s"]
    assert "title" not in tool.parameters


def test_tool_from_function_needs_type_hints() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(TypeError, match="type hint"):
        Tool.from_function(untyped)


class Weather(BaseModel):
    """Look up the weather."""

    city: str
    days: int = 1


def test_tool_from_model_and_name_rules() -> None:
    tool = Tool.from_model(Weather)
    assert tool.name == "Weather"
    assert tool.description == "Look up the weather."
    assert tool.parameters["required"] == ["city"]
    with pytest.raises(ValidationError, match="letters, digits"):
        Tool(name="http.post")
