"""The facade: backend switching by configuration, parameter policy, batches, tool round trips, the sync client."""

from __future__ import annotations

import logging
import warnings

import pytest

from diffusiongemma_sdk import (
    AsyncDiffusionGemma,
    AuthenticationError,
    DiffusionGemma,
    DiffusionParams,
    Generation,
    InvalidRequestError,
    Message,
    UnsupportedParameterError,
    UnsupportedParameterWarning,
)
from tests.support.openai_server import Reply, ScriptedServer, completion

pytestmark = pytest.mark.anyio

SENTINEL_KEY = "nvapi-SENTINEL-7f3a9c"


async def sort_request(client: AsyncDiffusionGemma, numbers: list[int]) -> Generation:
    """Application code: written once, never changed when the backend changes."""
    return await client.generate(f"Sort these numbers: {' '.join(map(str, numbers))}", max_tokens=64)


async def test_same_app_code_runs_on_two_backend_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    with ScriptedServer() as self_hosted, ScriptedServer() as hosted:
        monkeypatch.setenv("NVIDIA_BASE_URL", hosted.url)
        monkeypatch.setenv("NVIDIA_API_KEY", SENTINEL_KEY)
        results = []
        for spec in (f"openai:{self_hosted.url}#my-model", "nim"):
            monkeypatch.setenv("DIFFUSIONGEMMA_BACKEND", spec)
            async with AsyncDiffusionGemma() as client:  # configuration only: no spec in the code
                results.append(await sort_request(client, [3, 1, 2]))
    assert [r.text for r in results] == ["echo: Sort these numbers: 3 1 2"] * 2
    assert [r.backend for r in results] == [
        f"openai:{self_hosted.url}#my-model",
        "nim:google/diffusiongemma-26b-a4b-it",
    ]
    (local,) = self_hosted.chat_requests()
    (remote,) = hosted.chat_requests()
    assert (local.body["model"], "authorization" in local.headers) == ("my-model", False)
    assert remote.body["model"] == "google/diffusiongemma-26b-a4b-it"
    assert remote.headers["authorization"] == f"Bearer {SENTINEL_KEY}"


async def test_tool_round_trip_is_a_plain_list_append(server: ScriptedServer) -> None:
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 12, "b": 30}'}}
    server.queue(
        Reply(body=completion(None, tool_calls=[tool_call], finish_reason="tool_calls")),
        Reply(body=completion("42")),
    )

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    async with AsyncDiffusionGemma(f"openai:{server.url}#m") as client:
        messages: list[object] = [{"role": "user", "content": "What is 12 + 30?"}]
        first = await client.generate(messages, tools=[add], tool_choice="add")  # type: ignore[arg-type]
        assert first.finish_reason == "tool_calls"
        (call,) = first.tool_calls
        messages.append(first.to_message())
        messages.append({"role": "tool", "tool_call_id": call.id, "content": str(add(**call.arguments))})
        final = await client.generate(messages, tools=[add])  # type: ignore[arg-type]
    assert final.text == "42"
    first_body, second_body = (r.body for r in server.chat_requests())
    assert first_body["tools"][0]["function"]["name"] == "add"
    assert first_body["tools"][0]["function"]["parameters"]["required"] == ["a", "b"]
    assert first_body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assistant, tool = second_body["messages"][1:]
    assert assistant["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 12, "b": 30}'}
    assert assistant["content"] is None
    assert tool == {"role": "tool", "content": "42", "tool_call_id": "call_1"}


async def test_unsupported_diffusion_params_error_warn_drop(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVIDIA_BASE_URL", server.url)
    params = DiffusionParams(max_denoising_steps=8, entropy_bound=0.2)
    async with AsyncDiffusionGemma("nim", api_key="k") as client:
        with pytest.raises(
            UnsupportedParameterError, match=r"'nim:google/diffusiongemma-26b-a4b-it'.*'diffusion'"
        ) as info:
            await client.generate("q", diffusion=params)
        assert (info.value.backend, info.value.parameter) == ("nim:google/diffusiongemma-26b-a4b-it", "diffusion")
        assert server.chat_requests() == []
        # an empty DiffusionParams asks for nothing and passes
        await client.generate("q", diffusion=DiffusionParams())
    async with AsyncDiffusionGemma("nim", api_key="k", unsupported="warn") as client:
        with pytest.warns(UnsupportedParameterWarning, match="diffusion"):
            await client.generate("q", diffusion={"max_denoising_steps": 8})
    async with AsyncDiffusionGemma("nim", api_key="k", unsupported="drop") as client:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            await client.generate("q", diffusion=params)
    for request in server.chat_requests():
        assert not {"diffusion", "max_denoising_steps", "entropy_bound", "max_retries"} & set(request.body)


async def test_bad_arguments_raise_invalid_request(server: ScriptedServer) -> None:
    async with AsyncDiffusionGemma(f"openai:{server.url}#m") as client:
        with pytest.raises(InvalidRequestError, match="max_tokens"):
            await client.generate("q", max_tokens=0)
        with pytest.raises(InvalidRequestError, match="t_max"):
            await client.generate("q", diffusion={"t_min": 0.9, "t_max": 0.1})
        with pytest.raises(InvalidRequestError, match="tool_choice 'mul'"):
            await client.generate("q", tool_choice="mul")
    with pytest.raises(InvalidRequestError, match="unsupported"):
        AsyncDiffusionGemma(f"openai:{server.url}#m", unsupported="ignore")  # type: ignore[arg-type]
    assert server.chat_requests() == []


async def test_generate_batch_keeps_order_and_bounds_concurrency(server: ScriptedServer) -> None:
    server.default_delay = 0.1
    prompts = [f"item {i}" for i in range(9)]
    async with AsyncDiffusionGemma(f"openai:{server.url}#m") as client:
        results = await client.generate_batch(prompts, concurrency=3, max_tokens=8)
        assert [r.text for r in results] == [f"echo: {p}" for p in prompts]
        assert server.max_active == 3
        mixed = await client.generate_batch(["a", [], "b"], return_exceptions=True)
        assert isinstance(mixed[1], InvalidRequestError)
        assert [getattr(r, "text", None) for r in mixed] == ["echo: a", None, "echo: b"]
        with pytest.raises(InvalidRequestError):
            await client.generate_batch(["a", [], "b"])


async def test_secret_key_never_printed(server: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    server.queue(
        Reply(status=503, body={"error": {"message": "busy"}}, headers={"retry-after-ms": "1"}),
        Reply(status=401, body="Unauthorized", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}),
    )
    caplog.set_level(logging.DEBUG)
    client = AsyncDiffusionGemma(f"openai:{server.url}#m", api_key=SENTINEL_KEY)
    with pytest.raises(AuthenticationError) as info:
        await client.generate("q")
    texts = [repr(client), repr(client.backend), str(info.value), repr(info.value), str(info.value.body), caplog.text]
    texts.append(repr(vars(client.backend)))
    await client.aclose()
    assert all(SENTINEL_KEY not in text for text in texts)
    assert server.chat_requests()[0].headers["authorization"] == f"Bearer {SENTINEL_KEY}"
    assert "Retrying" in caplog.text


def test_sync_client_generate_stream_batch(server: ScriptedServer) -> None:
    with DiffusionGemma(f"openai:{server.url}#m") as client:
        assert client.generate("hi").text == "echo: hi"
        with client.stream("there") as stream:
            assert "".join(stream.text_stream) == "echo: there"
            assert stream.final().text == "echo: there"
        assert [g.text for g in client.generate_batch(["a", "b"], concurrency=2)] == ["echo: a", "echo: b"]
        assert [m.id for m in client.models()] == ["test-model"]
        assert client.capabilities.tools


async def test_sync_client_works_inside_a_running_event_loop(server: ScriptedServer) -> None:
    """As in a Jupyter notebook: the blocking client brings its own loop thread."""
    with DiffusionGemma(f"openai:{server.url}#m") as client:
        assert client.generate([Message(role="user", content="nb")]).text == "echo: nb"
