"""Structured output: schema in the prompt, tolerant extraction, validation and re-asking; native where declared."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import BaseModel

from diffusiongemma_sdk import AsyncDiffusionGemma, InvalidRequestError, OutputValidationError
from diffusiongemma_sdk._remote import NIM_CAPABILITIES, RemoteBackend
from diffusiongemma_sdk._structured import extract_json
from tests.support.openai_server import Reply, ScriptedServer, completion

pytestmark = pytest.mark.anyio


class Sorted(BaseModel):
    numbers: list[int]
    count: int


def usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": n, "completion_tokens": n, "total_tokens": 2 * n}


@pytest.mark.parametrize(
    "text",
    [
        '{"numbers": [1, 2], "count": 2}',
        'Here you go:\n```json\n{"numbers": [1, 2], "count": 2}\n```\nDone.',
        '<|channel>thought\n{"draft": true}<channel|>{"numbers": [1, 2], "count": 2}',
        'Sure! {"numbers": [1, 2], "count": 2} is the answer {',
    ],
)
def test_extract_json_tolerates_fences_thoughts_and_prose(text: str) -> None:
    assert extract_json(text) == {"numbers": [1, 2], "count": 2}


def test_extract_json_without_json_raises() -> None:
    with pytest.raises(ValueError, match="no JSON"):
        extract_json("just words")


async def test_schema_goes_into_the_prompt_and_answer_is_validated(server: ScriptedServer) -> None:
    server.queue(Reply(body=completion('```json\n{"numbers": [4, 9, 17], "count": 3}\n```')))
    async with AsyncDiffusionGemma(f"openai:{server.url}#m") as client:
        generation = await client.generate(
            [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Sort these numbers: 17 4 9"}],
            response_model=Sorted,
        )
    assert generation.parsed == Sorted(numbers=[4, 9, 17], count=3)
    (request,) = server.chat_requests()
    assert "response_format" not in request.body  # the server would answer 400
    system = request.body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("Be exact.\n\nAnswer with one JSON value")
    assert json.dumps(Sorted.model_json_schema(), separators=(",", ":")) in system["content"]


async def test_invalid_answer_is_reasked_with_the_error(server: ScriptedServer) -> None:
    server.queue(
        Reply(body=completion('{"numbers": [4, "nine"]}', usage=usage(3))),
        Reply(body=completion('{"numbers": [4, 9], "count": 2}', usage=usage(5))),
    )
    async with AsyncDiffusionGemma(f"openai:{server.url}#m") as client:
        generation = await client.generate("Sort these numbers: 9 4", response_model=Sorted)
    assert generation.parsed == Sorted(numbers=[4, 9], count=2)
    assert generation.usage.total_tokens == 16
    first, second = server.chat_requests()
    assert first.body["messages"][0]["role"] == "system"  # instruction added as a new system turn
    reask = second.body["messages"][-2:]
    assert reask[0] == {"role": "assistant", "content": '{"numbers": [4, "nine"]}'}
    assert "numbers.1" in reask[1]["content"]
    assert "count" in reask[1]["content"]


async def test_validation_retries_exhausted(server: ScriptedServer) -> None:
    server.queue(*[Reply(body=completion("no json here", usage=usage(1)))] * 3)
    async with AsyncDiffusionGemma(f"openai:{server.url}#m") as client:
        with pytest.raises(OutputValidationError, match="Sorted after 2 attempt") as info:
            await client.generate("q", response_model=Sorted, max_validation_retries=1)
        with pytest.raises(InvalidRequestError, match="tools"):
            await client.generate("q", response_model=Sorted, tools=[Sorted])
    assert info.value.attempts == ["no json here"] * 2
    assert len(info.value.errors) == 2
    assert info.value.usage.total_tokens == 4
    assert len(server.chat_requests()) == 2


async def test_native_structured_output_only_where_declared(server: ScriptedServer) -> None:
    server.queue(Reply(body=completion('{"numbers": [1], "count": 1}')))
    backend = RemoteBackend(
        name="native-server",
        base_url=server.url,
        model="m",
        api_key=None,
        capabilities=NIM_CAPABILITIES.model_copy(update={"native_structured_output": True}),
        timeout=10,
        max_retries=0,
    )
    async with AsyncDiffusionGemma(backend) as client:
        generation = await client.generate("Sort these numbers: 1", response_model=Sorted)
    assert generation.parsed == Sorted(numbers=[1], count=1)
    (request,) = server.chat_requests()
    assert request.body["response_format"]["json_schema"]["schema"] == Sorted.model_json_schema()
    assert [m["role"] for m in request.body["messages"]] == ["user"]


SORTED_SCHEMA = {
    "title": "Sorted",
    "type": "object",
    "properties": {"numbers": {"type": "array", "items": {"type": "integer"}}, "count": {"type": "integer"}},
    "required": ["numbers", "count"],
    "additionalProperties": False,
}


async def test_a_json_schema_dict_is_validated_and_re_asked_like_a_model() -> None:
    from diffusiongemma_sdk.testing import TEST_CAPABILITIES, TestBackend

    prompted = TEST_CAPABILITIES.model_copy(update={"native_structured_output": False})
    replies = [
        '{"numbers": [1, "2"], "count": 2}',
        '{"numbers": [1, 2], "count": 2, "extra": 1}',
        '{"numbers": [1, 2], "count": 2}',
    ]
    backend = TestBackend(replies, capabilities=prompted)
    async with AsyncDiffusionGemma(backend) as client:
        generation = await client.generate("Sort 2 1", response_model=SORTED_SCHEMA)
    assert generation.parsed == {"numbers": [1, 2], "count": 2}
    reasks = [request.messages[-1].text for request in backend.requests[1:]]
    assert "$.numbers[1]: must be of type integer, not str" in reasks[0]
    assert "$: unexpected field 'extra'" in reasks[1]
    assert '"additionalProperties":false' in backend.requests[0].messages[0].text  # the schema went in the prompt


@pytest.mark.parametrize(
    ("value", "schema", "problem"),
    [
        ({"a": 1}, {"type": "object", "required": ["a", "b"]}, "missing required field(s) b"),
        ([1, 2, 3], {"type": "array", "maxItems": 2}, "its number of items must be at most 2"),
        ("x", {"enum": ["a", "b"]}, "must be one of ['a', 'b']"),
        (True, {"type": "integer"}, "must be of type integer, not bool"),
        (None, {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "matches none of the allowed shapes"),
        (
            {"p": {"x": 0}},
            {"$defs": {"P": {"properties": {"x": {"minimum": 1}}}}, "properties": {"p": {"$ref": "#/$defs/P"}}},
            "$.p.x: it must be at least 1",
        ),
    ],
)
def test_the_schema_check_says_where_and_why(value: object, schema: dict[str, object], problem: str) -> None:
    from diffusiongemma_sdk._jsonschema import SchemaMismatch, check_json

    with pytest.raises(SchemaMismatch, match=re.escape(problem)):
        check_json(value, schema)
    check_json(2.0, {"type": "integer"})  # an integral float is an integer, as JSON has one number type
