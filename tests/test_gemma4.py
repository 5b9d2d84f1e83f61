from __future__ import annotations

import pytest

from diffusiongemma_sdk._gemma4 import Gemma4StreamParser, parse_gemma4, parse_gemma_value

Q = '<|"|>'


def test_thought_channel_and_answer() -> None:
    parsed = parse_gemma4("<|channel>thought\nLet me sort.<channel|>4 9 17<turn|>ignored")
    assert parsed.reasoning == "Let me sort."
    assert parsed.text == "4 9 17"
    assert parsed.tool_calls == []


@pytest.mark.parametrize(
    ("raw", "reasoning", "text"),
    [
        ("<|channel>thought\n<channel|>answer", "", "answer"),  # empty block
        ("<|channel>thought\nstill thinking", "still thinking", ""),  # unclosed block
        ("<|channel>thought<channel|>\nanswer", "", "answer"),  # no newline after the channel name
        ("<think>hmm</think> answer", "hmm", "answer"),
        ("plain answer", None, "plain answer"),
    ],
)
def test_reasoning_variants(raw: str, reasoning: str | None, text: str) -> None:
    parsed = parse_gemma4(raw)
    assert parsed.reasoning == reasoning
    assert parsed.text == text


def test_tool_calls_with_gemma_notation() -> None:
    raw = (
        f"<|tool_call>call:lookup{{limit:2,query:{Q}A, B: {{C}}{Q},tags:[{Q}x{Q},1.5,true],opt:null,"
        f"nested:{{deep:{{k:{Q}v{Q}}}}}}}<tool_call|>"
        "<|tool_call>call:add{a:12,b:30}<tool_call|><|tool_response>"
    )
    parsed = parse_gemma4(raw)
    assert [call.name for call in parsed.tool_calls] == ["lookup", "add"]
    assert parsed.tool_calls[0].arguments == {
        "limit": 2,
        "query": "A, B: {C}",
        "tags": ["x", 1.5, True],
        "opt": None,
        "nested": {"deep": {"k": "v"}},
    }
    assert parsed.tool_calls[1].arguments == {"a": 12, "b": 30}
    assert parsed.text == ""


def test_malformed_tool_calls_are_not_lost() -> None:
    parsed = parse_gemma4("<|tool_call>call:add{a:<tool_call|>")  # a call of add, its arguments as written
    assert [(call.name, call.arguments, call.raw_arguments) for call in parsed.tool_calls] == [("add", {}, "{a:")]
    assert parsed.text == ""
    unnamed = parse_gemma4("<|tool_call>{a:1}<tool_call|>")  # no tool named: kept as text
    assert unnamed.tool_calls == []
    assert unnamed.text == "<|tool_call>{a:1}<tool_call|>"


def test_value_parser_accepts_json_and_rejects_garbage() -> None:
    assert parse_gemma_value('{"a": "x", "b": [1, 2]}') == {"a": "x", "b": [1, 2]}
    with pytest.raises(ValueError, match="unterminated"):
        parse_gemma_value(f"{{a:{Q}open}}")
    with pytest.raises(ValueError, match="after the value"):
        parse_gemma_value("{a:1} trailing")


SAMPLES = [
    "<|channel>thought\nI add 12 and 30.<channel|>The answer is 42.<turn|>",
    f"<|channel>thought\n<channel|><|tool_call>call:add{{a:12,b:{Q}30{Q}}}<tool_call|>",
    "no markup at all, just < and | characters <| |>",
    "<think>a</think>b<|channel>thought\nc",
]


@pytest.mark.parametrize("raw", SAMPLES)
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_streaming_in_any_chunking_matches_whole_parse(raw: str, size: int) -> None:
    parser = Gemma4StreamParser()
    segments = []
    for start in range(0, len(raw), size):
        segments += parser.feed(raw[start : start + size])
    segments += parser.close()
    whole = parse_gemma4(raw)
    assert "".join(s.text for s in segments if s.kind == "text").rstrip() == whole.text
    assert [s.tool_call.arguments for s in segments if s.tool_call] == [c.arguments for c in whole.tool_calls]
    reasoning = "".join(s.text for s in segments if s.kind == "reasoning").rstrip()
    assert reasoning == (whole.reasoning or "")


def test_stream_holds_back_only_a_possible_marker() -> None:
    parser = Gemma4StreamParser()
    assert [s.text for s in parser.feed("hello <|chan")] == ["hello "]
    assert [(s.kind, s.text) for s in parser.feed("nel>thought\nhm")] == [("reasoning", "hm")]
    assert [(s.kind, s.text) for s in parser.feed("<channel|>ok<tur")] == [("text", "ok")]
    assert not parser.ended
    parser.feed("n|>more")
    assert parser.ended
