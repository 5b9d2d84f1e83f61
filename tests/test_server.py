"""The OpenAI-compatible server: real uvicorn on loopback, over a tiny torch checkpoint and over the scripted server.

Clients are real too: openai-python's `AsyncOpenAI`, the SDK's own `openai:` backend, and raw httpx for the error
cases.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from openai import APIError as OpenAIAPIError
from openai import AsyncOpenAI, BadRequestError
from openai._streaming import SSEDecoder

from diffusiongemma_sdk import (
    AsyncDiffusionGemma,
    CanvasEvent,
    ConfigurationError,
    DenoiseStepEvent,
    DiffusionParams,
    DoneEvent,
    UnsupportedParameterError,
)
from diffusiongemma_sdk._remote import RemoteBackend
from diffusiongemma_sdk.server import DEFAULT_HOST, DEFAULT_MAX_TOKENS_LIMIT, run_server
from tests.support.openai_server import Reply, ScriptedServer, chunk, completion
from tests.support.serving import ADD_TOOL, Running, serving
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

API_KEY = "sk-test-5d1c0ffee"
STEPS_LIMIT = 1_000_000  # torch_server's max_denoising_steps_limit: room for a canvas that never converges


# --- servers on loopback -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tests.support.tiny_checkpoint import TinySpec, build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), TinySpec(vocab=256, canvas=16))


@pytest.fixture(scope="module")
def torch_server(tiny: Path) -> Iterator[Running]:
    """The tiny torch checkpoint behind the server: random text, every diffusion feature."""
    with serving(f"torch:{tiny}", max_denoising_steps_limit=STEPS_LIMIT) as running:
        yield running


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


@pytest.fixture
def scripted(upstream: ScriptedServer) -> Iterator[ScriptedServer]:
    """The scripted OpenAI server behind `proxy_server`, with an empty script before and after each test."""
    upstream.replies.clear()
    upstream.requests.clear()
    upstream.disconnects = 0
    yield upstream
    upstream.replies.clear()


@pytest.fixture(scope="module")
def proxy_server(upstream: ScriptedServer) -> Iterator[Running]:
    """The scripted server's `openai:` backend behind the server: deterministic content, tools and reasoning."""
    with serving(f"openai:{upstream.url}#test-model", client_options={"max_retries": 0}, model_id="scripted") as s:
        yield s


def openai_client(running: Running, api_key: str = "unused") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=running.base, api_key=api_key, max_retries=0, timeout=60)


async def post(running: Running, body: Any, **options: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return await http.post(f"{running.base}/chat/completions", content=content, **options)


def assert_error(response: httpx.Response, status: int, *, code: str | None = None, param: str | None = None) -> str:
    """The response is OpenAI's error shape with this status (and code and param); returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert isinstance(body["error"]["type"], str)
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return str(body["error"]["message"])


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- models, health ------------------------------------------------------------------------------------------------


async def test_models_and_health_advertise_the_backend_capabilities(torch_server: Running) -> None:
    async with httpx.AsyncClient() as http:
        listing = (await http.get(f"{torch_server.base}/models")).json()
        health = await http.get(f"{torch_server.url}/health")
        one = await http.get(f"{torch_server.base}/models/{torch_server.model}")
        missing = await http.get(f"{torch_server.base}/models/gpt-4o")
    assert listing["object"] == "list"
    [entry] = listing["data"]
    assert entry["id"] == torch_server.model == torch_server.client.backend.name
    assert entry["object"] == "model"
    assert entry["capabilities"] == torch_server.client.capabilities.model_dump(mode="json")
    assert entry["capabilities"]["per_request_diffusion"] is True
    assert entry["capabilities"]["denoise_stream"] is True
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert one.json() == entry
    assert_error(missing, 404, code="model_not_found")
    async with openai_client(torch_server) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == [torch_server.model]


# --- openai-python against the torch engine -------------------------------------------------------------------------


async def test_openai_client_non_streaming_and_streaming(torch_server: Running) -> None:
    messages: Any = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Sort these numbers: 3 1 2"},
    ]
    async with openai_client(torch_server) as client:
        answer = await client.chat.completions.create(
            model=torch_server.model, messages=messages, max_tokens=24, seed=3, stop=["zzz"]
        )
        stream = await client.chat.completions.create(
            model=torch_server.model,
            messages=messages,
            max_completion_tokens=24,
            seed=3,
            stop="zzz",
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    assert answer.object == "chat.completion"
    assert answer.model == torch_server.model
    [choice] = answer.choices
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage is not None
    assert 0 < answer.usage.completion_tokens <= 24
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    extras = answer.usage.model_extra or {}
    assert extras["denoising_steps"] >= extras["canvases"] >= 1

    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks[:-1])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # the same seed through the same engine: the same answer as the non-streaming call
    assert streamed.strip() == (choice.message.content or "").strip()


async def test_temperature_and_top_p_are_accepted_and_ignored(torch_server: Running) -> None:
    """OpenAI clients send them by habit; the diffusion sampler keeps its own schedule (diffusion.t_max / t_min)."""
    async with openai_client(torch_server) as client:
        answers = [
            await client.chat.completions.create(
                model=torch_server.model, messages=user("Sort these numbers: 3 1 2"), max_tokens=16, seed=5, **extra
            )
            for extra in ({}, {"temperature": 0}, {"temperature": 1.7, "top_p": 0.1})
        ]
    assert len({answer.choices[0].message.content for answer in answers}) == 1


async def test_denoise_drafts_are_sse_comments_that_openai_clients_skip(torch_server: Running) -> None:
    request = {
        "model": torch_server.model,
        "messages": user("Reverse these words: red green blue"),
        "max_tokens": 16,
        "seed": 1,
        "stream": True,
        "diffusing": True,
        "diffusion": {"max_denoising_steps": 3},
    }
    raw = await post(torch_server, request)
    drafts = [line for line in raw.text.splitlines() if line.startswith(": denoise_step ")]
    assert len(drafts) == 3  # one canvas of 16 tokens, three steps
    assert json.loads(drafts[0].removeprefix(": denoise_step "))["step"] == 1
    assert raw.text.endswith("data: [DONE]\n\n")

    async with openai_client(torch_server) as client:
        stream = await client.chat.completions.create(
            model=torch_server.model,
            messages=user("Reverse these words: red green blue"),
            max_tokens=16,
            seed=1,
            stream=True,
            extra_body={"diffusing": True, "diffusion": {"max_denoising_steps": 3}},
        )
        chunks = [c async for c in stream]
    assert chunks
    for received in chunks:  # only chat.completion.chunk objects, each with its one choice
        assert received.object == "chat.completion.chunk"
        assert len(received.choices) == 1
        assert "draft_text" not in (received.model_extra or {})


def test_why_drafts_are_comments_openai_python_yields_named_events() -> None:
    """openai-python turns an `event: x` event into a chunk like any other, but skips comment lines."""
    decoder = SSEDecoder()
    named = list(decoder.iter_bytes(iter([b'event: denoise_step\ndata: {"step": 1}\n\n'])))
    assert [(e.event, e.json()) for e in named] == [("denoise_step", {"step": 1})]
    assert list(SSEDecoder().iter_bytes(iter([b': denoise_step {"step": 1}\n\n']))) == []


# --- the SDK's own client over the server ---------------------------------------------------------------------------


async def app_code(client: AsyncDiffusionGemma) -> tuple[Any, list[Any]]:
    """What an application writes once, whatever the backend."""
    params = DiffusionParams(max_denoising_steps=1, entropy_bound=0.3)
    answer = await client.generate("What is 1 + 2 ?", max_tokens=40, seed=4, thinking=True, diffusion=params)
    async with client.stream(
        "What is 1 + 2 ?", max_tokens=40, seed=4, thinking=True, diffusion=params, drafts=True
    ) as stream:
        events = [event async for event in stream]
    async with client.stream("What is 1 + 2 ?", max_tokens=40, seed=4, diffusion=params) as plain:
        assert not [event async for event in plain if isinstance(event, DenoiseStepEvent)]  # drafts only when asked
    return answer, events


async def test_sdk_app_moves_from_torch_to_the_server_without_a_code_change(tiny: Path, torch_server: Running) -> None:
    async with AsyncDiffusionGemma(f"torch:{tiny}") as local:
        local_answer, local_events = await app_code(local)
    async with AsyncDiffusionGemma(f"openai:{torch_server.base}") as remote:
        assert not remote.backend.capabilities_known  # learnt from GET /models before the first request
        remote_answer, remote_events = await app_code(remote)
        backend = remote.backend
        assert isinstance(backend, RemoteBackend)
        assert backend.advertised == torch_server.client.capabilities
        assert remote.capabilities.per_request_diffusion
        assert remote.capabilities.denoise_stream

    for answer in (local_answer, remote_answer):
        assert answer.usage.canvases is not None
        assert answer.usage.denoising_steps == answer.usage.canvases  # max_denoising_steps=1 honoured
    assert remote_answer.text == local_answer.text
    assert remote_answer.reasoning == local_answer.reasoning
    assert remote_answer.usage.completion_tokens == local_answer.usage.completion_tokens

    drafts = [e for e in remote_events if isinstance(e, DenoiseStepEvent)]
    local_drafts = [e for e in local_events if isinstance(e, DenoiseStepEvent)]
    assert drafts == local_drafts
    assert all(d.step == 1 for d in drafts)
    done = remote_events[-1]
    assert isinstance(done, DoneEvent)
    assert done.generation.text == local_answer.text
    assert done.generation.usage.denoising_steps == done.generation.usage.canvases == len(drafts)
    assert "".join(e.text_delta for e in remote_events if isinstance(e, CanvasEvent)).strip() == local_answer.text


async def test_sdk_client_still_refuses_what_the_server_lacks(torch_server: Running) -> None:
    from diffusiongemma_sdk import ImagePart, Message

    async with AsyncDiffusionGemma(f"openai:{torch_server.base}") as remote:
        with pytest.raises(UnsupportedParameterError, match="images"):
            await remote.generate([Message(role="user", content=[ImagePart(url="data:image/png;base64,AA")])])


# --- tools, reasoning and thinking through the scripted backend -----------------------------------------------------


async def test_tool_call_round_trip_with_openai_client(proxy_server: Running, scripted: ScriptedServer) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 12, "b": 30}'}}
    scripted.queue(
        Reply(body=completion(None, tool_calls=[call], finish_reason="tool_calls")),
        Reply(body=completion("12 + 30 = 42", reasoning_content="add them")),
    )
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Use tools."}, *user("What is 12 + 30?")]
    async with openai_client(proxy_server) as client:
        first = await client.chat.completions.create(
            model="scripted",
            messages=messages,
            tools=[ADD_TOOL],
            tool_choice="required",  # type: ignore[list-item]
        )
        assert first.choices[0].finish_reason == "tool_calls"
        [made] = first.choices[0].message.tool_calls or []
        assert made.type == "function"
        assert (made.id, made.function.name) == ("call_1", "add")
        assert json.loads(made.function.arguments) == {"a": 12, "b": 30}
        assert first.choices[0].message.content is None
        messages += [
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": made.id, "content": "42"},
        ]
        second = await client.chat.completions.create(
            model="scripted",
            messages=messages,  # type: ignore[arg-type]
            tools=[ADD_TOOL],  # type: ignore[list-item]
            extra_body={"chat_template_kwargs": {"enable_thinking": True}},
        )
    assert second.choices[0].message.content == "12 + 30 = 42"
    extras = second.choices[0].message.model_extra or {}
    assert extras["reasoning"] == extras["reasoning_content"] == "add them"
    first_up, second_up = (r.body for r in scripted.chat_requests())
    assert first_up["tool_choice"] == "required"
    assert first_up["tools"][0]["function"]["name"] == "add"
    assert "chat_template_kwargs" not in first_up
    assert second_up["chat_template_kwargs"] == {"enable_thinking": True}
    assistant, tool = second_up["messages"][2:]
    assert assistant["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 12, "b": 30}'}
    assert tool == {"role": "tool", "content": "42", "tool_call_id": "call_1"}


async def test_streamed_tool_calls_and_reasoning(proxy_server: Running, scripted: ScriptedServer) -> None:
    scripted.queue(
        Reply(
            events=[
                chunk(role="assistant", reasoning_content="I should add."),
                chunk(tool_calls=[{"index": 0, "id": "call_9", "function": {"name": "add", "arguments": '{"a": 1'}}]),
                chunk(tool_calls=[{"index": 0, "function": {"arguments": ', "b": 2}'}}]),
                chunk(finish_reason="tool_calls"),
                "[DONE]",
            ]
        )
    )
    async with openai_client(proxy_server) as client:
        stream = await client.chat.completions.create(
            model="scripted",
            messages=user("1 + 2?"),
            tools=[ADD_TOOL],
            stream=True,  # type: ignore[list-item]
        )
        chunks = [c async for c in stream]
    deltas = [c.choices[0].delta for c in chunks]
    reasoning = "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    assert reasoning == "I should add."
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == reasoning
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert len(calls) == 1
    assert (calls[0].index, calls[0].id, calls[0].function.name) == (0, "call_9", "add")  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments or "") == {"a": 1, "b": 2}  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_an_error_mid_stream_reaches_the_openai_client(proxy_server: Running, scripted: ScriptedServer) -> None:
    scripted.queue(Reply(events=[chunk(content="part one"), {"error": {"message": "worker died", "code": 500}}]))
    async with openai_client(proxy_server) as client:
        stream = await client.chat.completions.create(model="scripted", messages=user("q"), stream=True)
        with pytest.raises(OpenAIAPIError, match="worker died"):
            async for _ in stream:
                pass


async def test_upstream_errors_before_the_first_chunk_keep_their_status(
    proxy_server: Running, scripted: ScriptedServer
) -> None:
    scripted.queue(
        Reply(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "7"}),
        Reply(status=503, body={"error": {"message": "overloaded"}}),
    )
    limited = await post(proxy_server, {"model": "scripted", "messages": user("q"), "stream": True})
    assert "slow down" in assert_error(limited, 429)
    assert limited.headers["retry-after"] == "7"
    assert_error(await post(proxy_server, {"model": "scripted", "messages": user("q")}), 502, code="upstream_error")


# --- client mistakes: 4xx in OpenAI's error shape --------------------------------------------------------------------

MODEL = "<model>"


def req(**fields: Any) -> dict[str, Any]:
    """A chat request for the served model (MODEL is replaced in the test), with these fields changed."""
    return {"model": MODEL, "messages": user("q"), **fields}


def tool(name: str = "f", **function: Any) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": name, **function}}]


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
BAD_BODIES: list[tuple[str, Any, int, str | None, str | None]] = [
    ("malformed JSON", b'{"model": "x", "messages": [', 400, "invalid_json", None),
    ("not UTF-8", b'{"model": "\xff"}', 400, "invalid_json", None),
    ("not an object", [1, 2], 400, "invalid_json", None),
    ("no model", {"messages": user("q")}, 400, "missing_required_parameter", "model"),
    ("no messages", {"model": MODEL}, 400, "missing_required_parameter", "messages"),
    ("empty messages", req(messages=[]), 400, None, "messages"),
    ("messages not a list", req(messages="hi"), 400, "invalid_type", "messages"),
    ("max_tokens as text", req(max_tokens="5"), 400, "invalid_type", "max_tokens"),
    ("max_tokens zero", req(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("stream as text", req(stream="yes"), 400, "invalid_type", "stream"),
    ("stop as a number", req(stop=5), 400, "invalid_type", "stop"),
    ("unknown field", req(foo=1), 400, "unknown_parameter", "foo"),
    ("temperature out of OpenAI's range", req(temperature=2.5), 400, "invalid_value", "temperature"),
    ("top_p out of OpenAI's range", req(top_p=-0.1), 400, "invalid_value", "top_p"),
    ("NaN is not JSON", b'{"model": "x", "messages": [], "temperature": NaN}', 400, "invalid_json", None),
    ("nested too deeply", req(metadata=json.loads("[" * 70 + "]" * 70)), 400, "invalid_json", None),
    ("seed beyond 64 bits", req(seed=2**63), 400, "invalid_value", "seed"),
    ("max_tokens over the limit", req(max_tokens=DEFAULT_MAX_TOKENS_LIMIT + 1), 400, "invalid_value", "max_tokens"),
    (
        "max_completion_tokens over the limit",
        req(max_completion_tokens=10**30),
        400,
        "invalid_value",
        "max_completion_tokens",
    ),
    (
        "denoising steps over the limit",
        req(diffusion={"max_denoising_steps": STEPS_LIMIT + 1}),
        400,
        "invalid_value",
        "diffusion.max_denoising_steps",
    ),
    ("n above 1", req(n=2), 400, "unsupported_parameter", "n"),
    ("logprobs", req(logprobs=True), 400, "unsupported_parameter", "logprobs"),
    ("bad role", req(messages=[{"role": "robot", "content": "q"}]), 400, None, "messages[0]"),
    ("tool result without id", req(messages=[*user("q"), {"role": "tool", "content": "4"}]), 400, None, "messages[1]"),
    ("bad content part", req(messages=[{"role": "user", "content": [{"type": "audio"}]}]), 400, None, "messages[0]"),
    (
        "bad tool call",
        req(messages=[{"role": "assistant", "tool_calls": [{"function": 1}]}]),
        400,
        None,
        "messages[0]",
    ),
    ("schema not an object", req(tools=tool(parameters={"type": "string"})), 400, None, "tools[0].function.parameters"),
    (
        "schema requires an unknown parameter",
        req(tools=tool(parameters={"type": "object", "properties": {}, "required": ["x"]})),
        400,
        None,
        "tools[0].function.parameters",
    ),
    ("tool name with a space", req(tools=tool("my tool")), 400, None, "tools[0].function.name"),
    ("tool without a name", req(tools=[{"type": "function", "function": {}}]), 400, "missing_required_parameter", None),
    ("tool declared twice", req(tools=[*tool(), *tool()]), 400, None, "tools[1].function.name"),
    (
        "tool_choice names an unknown tool",
        req(tools=[ADD_TOOL], tool_choice={"type": "function", "function": {"name": "mul"}}),
        400,
        None,
        "tool_choice",
    ),
    ("tool_choice without tools", req(tool_choice="required"), 400, None, "tool_choice"),
    ("unknown diffusion field", req(diffusion={"steps": 4}), 400, "unknown_parameter", "diffusion.steps"),
    ("bad diffusion value", req(diffusion={"t_min": -1}), 400, "invalid_value", "diffusion.t_min"),
    ("diffusion not an object", req(diffusion=[1]), 400, "invalid_type", "diffusion"),
    ("diffusing without stream", req(diffusing=True), 400, None, "diffusing"),
    ("stream_options without stream", req(stream_options={"include_usage": True}), 400, None, "stream_options"),
    ("unknown template kwarg", req(chat_template_kwargs={"x": 1}), 400, "unknown_parameter", "chat_template_kwargs.x"),
    ("json_schema output", req(response_format=SCHEMA_FORMAT), 400, "unsupported_parameter", "response_format"),
    ("images on a text-only model", req(messages=[{"role": "user", "content": [IMAGE]}]), 400, None, "messages"),
    ("max_tokens disagree", req(max_tokens=5, max_completion_tokens=6), 400, None, "max_tokens"),
    ("unknown model", req(model="gpt-4o"), 404, "model_not_found", "model"),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"), [case[1:] for case in BAD_BODIES], ids=[case[0] for case in BAD_BODIES]
)
async def test_client_mistakes_are_4xx_in_openai_shape(
    torch_server: Running, body: Any, status: int, code: str | None, param: str | None
) -> None:
    if isinstance(body, dict) and body.get("model") == MODEL:
        body = {**body, "model": torch_server.model}
    assert_error(await post(torch_server, body), status, code=code, param=param)


async def test_backend_limits_are_unsupported_parameter_errors(proxy_server: Running) -> None:
    """The scripted `openai:` backend takes no diffusion settings and streams no drafts."""
    base = {"model": "scripted", "messages": user("q")}
    response = await post(proxy_server, {**base, "diffusion": {"max_denoising_steps": 2}})
    assert "'diffusion'" in assert_error(response, 400, code="unsupported_parameter", param="diffusion")
    response = await post(proxy_server, {**base, "stream": True, "diffusing": True})
    assert_error(response, 400, code="unsupported_parameter", param="diffusing")
    async with openai_client(proxy_server) as client:
        with pytest.raises(BadRequestError) as info:
            await client.chat.completions.create(
                model="scripted", messages=user("q"), extra_body={"diffusion": {"t_max": 2.0}}
            )
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == "diffusion"


async def test_unknown_routes_and_methods_are_json_404_and_405(proxy_server: Running) -> None:
    async with httpx.AsyncClient() as http:
        assert_error(await http.get(f"{proxy_server.base}/completions"), 404)
        assert_error(await http.post(f"{proxy_server.url}/nope", json={}), 404)
        wrong_method = await http.get(f"{proxy_server.base}/chat/completions")
        assert_error(wrong_method, 405)
        assert "POST" in wrong_method.headers["allow"]
        assert_error(await http.delete(f"{proxy_server.base}/models"), 405)


# --- auth and body limit --------------------------------------------------------------------------------------------


async def test_bearer_key_is_required_and_never_echoed(
    upstream: ScriptedServer, scripted: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    spec = f"openai:{upstream.url}#test-model"
    with serving(spec, api_key=API_KEY, model_id="scripted") as running:
        body = {"model": "scripted", "messages": user("hello")}
        missing = await post(running, body)
        assert_error(missing, 401, code="invalid_api_key")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await post(running, body, headers={"Authorization": f"Bearer {API_KEY}x"})
        assert_error(wrong, 401, code="invalid_api_key")
        assert API_KEY not in wrong.text
        assert_error(await post(running, body, headers={"Authorization": f"Basic {API_KEY}"}), 401)
        async with httpx.AsyncClient() as http:
            assert_error(await http.get(f"{running.base}/models"), 401)
            assert (await http.get(f"{running.url}/health")).status_code == 200  # for load balancers
        async with openai_client(running, api_key=API_KEY) as client:
            answer = await client.chat.completions.create(model="scripted", messages=user("hello"))
            assert answer.choices[0].message.content == "echo: hello"
        async with openai_client(running, api_key="nope") as client:
            with pytest.raises(Exception, match="401"):
                await client.models.list()
        async with AsyncDiffusionGemma(f"openai:{running.base}", api_key=API_KEY) as sdk:
            assert (await sdk.generate("hi")).text == "echo: hi"
    assert API_KEY not in caplog.text
    assert not any(API_KEY in json.dumps(r.headers) for r in upstream.requests)  # not passed on upstream


async def test_bodies_over_the_limit_are_413(upstream: ScriptedServer, scripted: ScriptedServer) -> None:
    with serving(f"openai:{upstream.url}#test-model", max_body_bytes=2048, model_id="scripted") as running:
        small = await post(running, {"model": "scripted", "messages": user("hi")})
        assert small.status_code == 200
        big = {"model": "scripted", "messages": user("x" * 10_000)}
        assert_error(await post(running, big), 413, code="request_too_large")

        async def chunked() -> Any:  # no Content-Length: counted as it arrives
            payload = json.dumps(big).encode()
            for start in range(0, len(payload), 1000):
                yield payload[start : start + 1000]

        async with httpx.AsyncClient() as http:
            response = await http.post(f"{running.base}/chat/completions", content=chunked())
        assert_error(response, 413, code="request_too_large")


# --- disconnects and shutdown ---------------------------------------------------------------------------------------

ENDLESS = {"max_denoising_steps": STEPS_LIMIT, "confidence_threshold": 1e-12}  # random weights never converge


async def test_client_disconnect_mid_stream_stops_the_torch_generation(torch_server: Running) -> None:
    from diffusiongemma_torch._backend import TorchBackend

    backend = torch_server.client.backend
    assert isinstance(backend, TorchBackend)
    body = {
        "model": torch_server.model,
        "messages": user("q"),
        "stream": True,
        "diffusing": True,
        "max_tokens": 16,
        "diffusion": ENDLESS,
    }
    url = f"{torch_server.base}/chat/completions"
    async with httpx.AsyncClient(timeout=60) as http, http.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith(": denoise_step"):
                break  # leaving the block closes the connection mid-stream
    # a canvas that never converges is denoised until the disconnect reaches the engine
    await wait_until(lambda: not backend._scheduler.running and not backend._scheduler.pool.rows, timeout=30)
    assert backend._scheduler.worker.borrowed_tokens == 0
    async with openai_client(torch_server) as client:  # and the engine serves the next request
        answer = await client.chat.completions.create(
            model=torch_server.model, messages=user("q"), max_tokens=8, extra_body={"diffusion": {"t_max": 2.0}}
        )
    assert answer.usage is not None
    assert answer.usage.completion_tokens <= 8


async def test_client_disconnect_cancels_the_upstream_request(proxy_server: Running, scripted: ScriptedServer) -> None:
    scripted.queue(Reply(body=completion("late"), delay=30))
    async with httpx.AsyncClient(timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{proxy_server.base}/chat/completions", json={"model": "scripted", "messages": user("q")})
    assert scripted.wait_for_disconnect(10)

    scripted.disconnects = 0
    scripted.queue(Reply(events=[chunk(content="a"), chunk(content="b")], delay=0.5, stall=30))
    async with openai_client(proxy_server) as client:
        stream = await client.chat.completions.create(model="scripted", messages=user("q"), stream=True)
        async for received in stream:
            if received.choices and received.choices[0].delta.content == "a":
                break
        await stream.close()
    assert scripted.wait_for_disconnect(10)


async def test_shutdown_finishes_or_cancels_in_flight_requests(
    upstream: ScriptedServer, scripted: ScriptedServer
) -> None:
    scripted.queue(
        Reply(events=[chunk(content="never finishes")], stall=60),
        Reply(body=completion("finished during shutdown"), delay=0.5),
    )
    body = {"model": "scripted", "messages": user("q")}
    results: list[httpx.Response] = []
    rest: list[str] = []
    with serving(f"openai:{upstream.url}#test-model", graceful=2, model_id="scripted") as running:
        url = f"{running.base}/chat/completions"
        async with httpx.AsyncClient(timeout=30) as http, http.stream("POST", url, json={**body, "stream": True}) as s:
            lines = s.aiter_lines()
            async for line in lines:
                if "never finishes" in line:
                    break

            async def quick() -> None:
                results.append(await http.post(url, json=body))

            async with anyio.create_task_group() as group:
                group.start_soon(quick)
                await anyio.sleep(0.2)  # both requests in flight
                stopped = anyio.current_time()
                await anyio.to_thread.run_sync(running.stop)
            assert anyio.current_time() - stopped < 10
            try:
                async for line in lines:
                    rest.append(line)
            except httpx.RemoteProtocolError:
                pass  # the body was cut off
    assert "data: [DONE]" not in rest  # the stream did not pretend to be complete
    assert results[0].status_code == 200  # the short request finished during the grace period
    assert results[0].json()["choices"][0]["message"]["content"] == "finished during shutdown"
    assert scripted.wait_for_disconnect(10)  # the stalled upstream stream was closed


# --- run_server and packaging ---------------------------------------------------------------------------------------


def test_run_server_defaults_to_loopback_and_reports_a_busy_port(upstream: ScriptedServer) -> None:
    import inspect

    parameters = inspect.signature(run_server).parameters
    assert list(parameters)[:4] == ["backend_spec", "host", "port", "api_key"]
    assert parameters["host"].default == DEFAULT_HOST == "127.0.0.1"
    assert parameters["api_key"].default is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"could not start on 127.0.0.1:{port}"):
            run_server(f"openai:{upstream.url}#test-model", port=port, log_level="critical")
    with pytest.raises(ConfigurationError, match="Unknown backend scheme"):
        run_server("nope:x")


def test_the_core_imports_without_the_server_dependencies() -> None:
    script = (
        "import sys\n"
        "sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "import diffusiongemma_sdk, diffusiongemma_sdk.server as server\n"
        "from diffusiongemma_sdk import AsyncDiffusionGemma, ConfigurationError\n"
        "try:\n"
        "    server.create_app(AsyncDiffusionGemma('openai:http://127.0.0.1:9/v1#m'))\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'diffusiongemma-sdk[server]'" in result.stdout
