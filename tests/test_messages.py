from __future__ import annotations

import pytest

from diffusiongemma_sdk import Generation, InvalidRequestError, Message, ToolCall
from diffusiongemma_sdk._messages import normalize_messages


def test_string_becomes_one_user_message() -> None:
    assert normalize_messages("hi") == [Message(role="user", content="hi")]


def test_openai_dicts_with_tool_round_trip() -> None:
    messages = normalize_messages(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "What is 2+3?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "5"},
        ]
    )
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[1].text == "What is 2+3?"
    assert messages[2].tool_calls == [ToolCall(id="c1", name="add", arguments={"a": 2, "b": 3})]
    assert messages[2].content == ""
    assert messages[3].tool_call_id == "c1"


def test_tool_call_model_dump_form_and_generation_are_accepted() -> None:
    call = ToolCall(name="add", arguments={"a": 1})
    generation = Generation(text="thinking done", tool_calls=[call], reasoning="r")
    messages = normalize_messages(
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
            generation,
        ]
    )
    assert messages[1].tool_calls == [call]
    assert messages[2] == generation.to_message()


def test_image_url_parts() -> None:
    (message,) = normalize_messages(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    )
    assert message.images[0].url == "data:image/png;base64,AAAA"


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([], "empty"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\].*role"),
        ([{"role": "user", "content": "x"}, {"role": "tool", "content": "5"}], r"messages\[1\].*tool_call_id"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "unknown content part type 'audio'"),
        ([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}], "missing field 'name'"),
        ([42], r"messages\[0\] is a int"),
    ],
)
def test_bad_messages_raise_clear_typed_errors(bad: list[object], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        normalize_messages(bad)  # type: ignore[arg-type]
