"""Wire-format details of the remote backend, checked with respx (no sockets)."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from diffusiongemma_sdk import AsyncDiffusionGemma, ImagePart, Message, Tool
from diffusiongemma_sdk._remote import NIM_BASE_URL

pytestmark = pytest.mark.anyio

OK = {
    "id": "c",
    "object": "chat.completion",
    "model": "google/diffusiongemma-26b-a4b-it",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


@respx.mock
async def test_nim_request_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-abc")
    route = respx.post(f"{NIM_BASE_URL}/chat/completions").mock(return_value=httpx.Response(200, json=OK))
    image = ImagePart(url="https://example.invalid/cat.png")
    async with AsyncDiffusionGemma("nim", max_retries=5, timeout=30) as client:
        await client.generate(
            [
                {"role": "system", "content": "sys"},
                Message(role="user", content=[{"type": "text", "text": "what?"}, image]),  # type: ignore[list-item]
            ],
            max_tokens=300,
            thinking=True,
            seed=7,
            stop="END",
            tool_choice="required",
            tools=[Tool(name="add")],
        )
    request = route.calls.last.request
    body = json.loads(request.content)
    assert request.headers["authorization"] == "Bearer nvapi-abc"
    assert request.headers["user-agent"].startswith("diffusiongemma-sdk/")
    assert body == {
        "model": "google/diffusiongemma-26b-a4b-it",
        "messages": [
            {"role": "system", "content": "sys"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what?"},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
                ],
            },
        ],
        "max_tokens": 300,
        "chat_template_kwargs": {"enable_thinking": True},
        "tools": [
            {
                "type": "function",
                "function": {"name": "add", "description": "", "parameters": {"type": "object", "properties": {}}},
            }
        ],
        "tool_choice": "required",
        "seed": 7,
        "stop": ["END"],
    }


@respx.mock
async def test_thinking_unset_sends_no_template_kwargs_and_stream_asks_for_usage() -> None:
    route = respx.post("http://gpu-box:8000/v1/chat/completions").mock(
        side_effect=[
            httpx.Response(200, json=OK),
            httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\r\n\r\n'
                b": keep-alive comment\n\ndata: [DONE]\n\n",
            ),
        ]
    )
    async with AsyncDiffusionGemma("openai:http://gpu-box:8000/v1#m") as client:
        await client.generate("q")
        async with client.stream("q") as stream:
            assert (await stream.final()).text == "hi"
    plain, streamed = (json.loads(call.request.content) for call in route.calls)
    assert "chat_template_kwargs" not in plain
    assert "stream" not in plain
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}
    assert route.calls[1].request.headers["accept"] == "text/event-stream"


@respx.mock
async def test_truncated_json_body_is_a_response_validation_error() -> None:
    from diffusiongemma_sdk import APIResponseValidationError

    respx.post("http://gpu-box:8000/v1/chat/completions").mock(
        return_value=httpx.Response(
            200, content=b'{"choices": [{"message": ', headers={"content-type": "application/json"}
        )
    )
    async with AsyncDiffusionGemma("openai:http://gpu-box:8000/v1#m") as client:
        with pytest.raises(APIResponseValidationError, match="not valid JSON"):
            await client.generate("q")
