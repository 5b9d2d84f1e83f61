"""The remote backend against a real local HTTP server: generation, streaming, errors, retries, cancellation."""

from __future__ import annotations

import time

import anyio
import pytest

from diffusiongemma_sdk import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    AsyncDiffusionGemma,
    AuthenticationError,
    BadRequestError,
    CanvasEvent,
    DoneEvent,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ReasoningEvent,
    ToolCallEvent,
    UsageEvent,
)
from tests.support.openai_server import Reply, ScriptedServer, chunk, completion

pytestmark = pytest.mark.anyio


def client_for(server: ScriptedServer, **options: object) -> AsyncDiffusionGemma:
    return AsyncDiffusionGemma(f"openai:{server.url}#test-model", **options)  # type: ignore[arg-type]


async def test_generate_and_model_discovery(server: ScriptedServer) -> None:
    async with AsyncDiffusionGemma(f"openai:{server.url}") as client:
        generation = await client.generate("Sort these numbers: 3 1 2", max_tokens=64, thinking=False)
        assert [model.id for model in await client.models()] == ["test-model"]
    assert generation.text == "echo: Sort these numbers: 3 1 2"
    assert generation.finish_reason == "stop"
    assert generation.usage.total_tokens == 10
    assert generation.backend == f"openai:{server.url}"
    (chat,) = server.chat_requests()
    assert chat.body["model"] == "test-model"  # discovered from GET /v1/models
    assert chat.body["max_tokens"] == 64
    assert chat.body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "authorization" not in chat.headers  # a local server needs no key


async def test_stream_events_text_stream_and_final(server: ScriptedServer) -> None:
    server.queue(
        Reply(
            events=[
                chunk(role="assistant", content=""),
                chunk(reasoning="I sort."),
                chunk(content="1 2 "),
                {**chunk(content="3"), "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}},
                chunk(finish_reason="stop"),
                {
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 3},
                },
                "[DONE]",
            ]
        )
    )
    async with client_for(server) as client, client.stream("Sort these numbers: 3 1 2") as stream:
        events = [event async for event in stream]
        final = await stream.final()
    kinds = [type(event) for event in events]
    assert kinds == [ReasoningEvent, CanvasEvent, CanvasEvent, UsageEvent, DoneEvent]
    assert [e.canvas_index for e in events if isinstance(e, CanvasEvent)] == [0, 1]
    assert final.text == "1 2 3"
    assert final.reasoning == "I sort."
    assert final.usage.completion_tokens == 3  # the last usage seen, not a sum
    assert final.usage.total_tokens == 12
    body = server.chat_requests()[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_text_stream_and_inline_markup_lifting(server: ScriptedServer) -> None:
    server.queue(
        Reply(
            events=[
                chunk(content="<|channel>thought\nadd them<chan"),
                chunk(content="nel|><|tool_call>call:add{a:12,b:30}<tool_call|>"),
                chunk(finish_reason="stop"),
            ]
        )
    )
    async with client_for(server) as client, client.stream("What is 12 + 30?", tools=[add]) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.final()
    assert texts == []
    assert final.reasoning == "add them"
    assert [(c.name, c.arguments) for c in final.tool_calls] == [("add", {"a": 12, "b": 30})]
    assert final.finish_reason == "tool_calls"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_streamed_tool_calls_without_index_and_with_argument_deltas(server: ScriptedServer) -> None:
    whole = {"id": "a", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    server.queue(
        Reply(
            events=[
                chunk(tool_calls=[whole]),
                chunk(tool_calls=[{**whole, "id": "b", "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'}}]),
                chunk(finish_reason="tool_calls"),
            ]
        ),
        Reply(
            events=[
                chunk(tool_calls=[{"index": 0, "id": "x", "function": {"name": "add", "arguments": '{"a": '}}]),
                chunk(tool_calls=[{"index": 0, "function": {"arguments": "5, "}}]),
                chunk(tool_calls=[{"index": 0, "function": {"arguments": '"b": 6}'}}]),
                chunk(finish_reason="tool_calls"),
            ]
        ),
    )
    async with client_for(server) as client:
        async with client.stream("q", tools=[add]) as stream:
            events = [e async for e in stream if isinstance(e, ToolCallEvent)]
        assert [(e.tool_call.id, e.tool_call.arguments) for e in events] == [
            ("a", {"a": 1, "b": 2}),
            ("b", {"a": 3, "b": 4}),
        ]
        async with client.stream("q", tools=[add]) as stream:
            final = await stream.final()
    assert [(c.id, c.arguments) for c in final.tool_calls] == [("x", {"a": 5, "b": 6})]


async def test_non_streaming_reasoning_fields_and_unknown_fields_kept(server: ScriptedServer) -> None:
    server.queue(
        Reply(body={**completion("42", reasoning_content="old field"), "nvext": {"x": 1}}),
        Reply(body=completion("<|channel>thought\nunclosed", finish_reason="length")),
        Reply(body=completion("plain", reasoning="new field", stop_reason=None)),
    )
    async with client_for(server) as client:
        first, second, third = [await client.generate("q") for _ in range(3)]
    assert (first.text, first.reasoning, first.extra["nvext"]) == ("42", "old field", {"x": 1})
    assert (second.text, second.reasoning, second.finish_reason) == ("", "unclosed", "length")
    assert (third.reasoning, "stop_reason" in third.extra) == ("new field", True)


@pytest.mark.parametrize(
    ("reply", "error", "text"),
    [
        (
            Reply(status=401, body="Unauthorized", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}),
            AuthenticationError,
            "invalid_token",
        ),
        (
            Reply(status=403, body={"status": 403, "title": "Forbidden", "detail": "Authorization failed"}),
            PermissionDeniedError,
            "Forbidden: Authorization failed",
        ),
        (
            Reply(status=404, body={"error": {"message": "model nope not found", "code": 404}}),
            NotFoundError,
            "model nope not found",
        ),
        (
            Reply(status=400, body={"object": "error", "message": "bad schema", "code": 400}),
            BadRequestError,
            "bad schema",
        ),
    ],
)
async def test_error_shapes_map_to_typed_errors(
    server: ScriptedServer, reply: Reply, error: type[APIError], text: str
) -> None:
    server.queue(reply)
    async with client_for(server) as client:
        with pytest.raises(error, match=text):
            await client.generate("q")
    assert len(server.chat_requests()) == 1  # never retried


async def test_request_id_is_captured(server: ScriptedServer) -> None:
    server.queue(Reply(status=400, body={"error": {"message": "no"}}, headers={"NVCF-REQID": "req-123"}))
    async with client_for(server) as client:
        with pytest.raises(BadRequestError) as info:
            await client.generate("q")
    assert info.value.request_id == "req-123"
    assert info.value.status_code == 400
    assert "req-123" in str(info.value)


async def test_429_with_retry_after_is_retried_after_waiting(server: ScriptedServer) -> None:
    server.queue(Reply(status=429, body={"status": 429, "title": "Too Many Requests"}, headers={"Retry-After": "1"}))
    async with client_for(server) as client:
        started = time.monotonic()
        generation = await client.generate("hello")
        waited = time.monotonic() - started
    assert generation.text == "echo: hello"
    assert len(server.chat_requests()) == 2
    assert waited >= 1.0


async def test_503_beyond_max_retries_raises_after_exactly_n_plus_one_requests(server: ScriptedServer) -> None:
    server.queue(*[Reply(status=503, body={"error": {"message": "overloaded"}}, headers={"retry-after-ms": "10"})] * 4)
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(InternalServerError, match="overloaded") as info:
            await client.generate("q")
    assert info.value.status_code == 503
    assert len(server.chat_requests()) == 3


async def test_transient_degraded_400_is_retried_and_per_call_retries_apply(server: ScriptedServer) -> None:
    degraded = Reply(status=400, body={"detail": "Function id abc: DEGRADED function cannot be invoked"})
    degraded.headers["retry-after-ms"] = "5"
    server.queue(degraded, degraded)
    async with client_for(server, max_retries=0) as client:
        with pytest.raises(BadRequestError):
            await client.generate("q")
        assert (await client.generate("q", max_retries=1)).text == "echo: q"
    assert len(server.chat_requests()) == 3


async def test_error_object_mid_stream_carries_the_partial_generation(server: ScriptedServer) -> None:
    server.queue(
        Reply(events=[chunk(content="part one"), {"error": {"message": "worker died", "code": 500}}, "[DONE]"])
    )
    async with client_for(server) as client, client.stream("q") as stream:
        with pytest.raises(InternalServerError, match="worker died") as info:
            async for _ in stream:
                pass
    assert info.value.partial is not None
    assert info.value.partial.text == "part one"
    assert info.value.partial.finish_reason == "cancelled"
    assert len(server.chat_requests()) == 1  # a stream is never retried once events were delivered


async def test_reset_mid_stream_and_malformed_event(server: ScriptedServer) -> None:
    server.queue(
        Reply(events=[chunk(content="so far")], reset_after_events=True),
        Reply(events=[chunk(content="ok"), "data: {not json"]),
    )
    async with client_for(server) as client:
        with pytest.raises(APIConnectionError) as broken:
            await (client.stream("q")).final()
        assert broken.value.partial is not None
        assert broken.value.partial.text == "so far"
        with pytest.raises(APIResponseValidationError, match="not JSON"):
            await (client.stream("q")).final()


async def test_cancelling_a_generate_closes_the_connection(server: ScriptedServer) -> None:
    server.queue(Reply(body=completion("late"), delay=10))
    async with client_for(server) as client:
        with anyio.move_on_after(0.3):
            await client.generate("q")
        assert server.wait_for_disconnect()


async def test_cancelling_a_stream_closes_the_connection(server: ScriptedServer) -> None:
    server.queue(Reply(events=[chunk(content="first"), chunk(content="never")], delay=0.05, stall=10))
    async with client_for(server) as client:
        received: list[str] = []
        with anyio.move_on_after(1.0):
            async with client.stream("q") as stream:
                async for text in stream.text_stream:
                    received.append(text)
        assert received == ["first", "never"]
        assert server.wait_for_disconnect()


async def test_closing_a_stream_early_makes_final_raise_cancelled(server: ScriptedServer) -> None:
    from diffusiongemma_sdk import GenerationCancelled

    server.queue(Reply(events=[chunk(content="a"), chunk(content="b")], delay=0.05, stall=10))
    async with client_for(server) as client:
        stream = client.stream("q")
        async for event in stream:
            assert isinstance(event, CanvasEvent)
            break
        await stream.aclose()
        with pytest.raises(GenerationCancelled) as info:
            await stream.final()
        assert info.value.partial is not None
        assert info.value.partial.text == "a"
        assert server.wait_for_disconnect()


async def test_unreachable_server_is_a_connection_error_after_retries() -> None:
    with anyio.fail_after(10):
        async with AsyncDiffusionGemma("openai:http://127.0.0.1:9/v1#m", max_retries=1) as client:
            with pytest.raises(APIConnectionError, match="Could not reach"):
                await client.generate("q")


async def test_rate_limit_with_a_huge_retry_after_fails_at_once(server: ScriptedServer) -> None:
    server.queue(Reply(status=429, body="try again in 5 hours", headers={"Retry-After": "18000"}))
    async with client_for(server) as client:
        with pytest.raises(RateLimitError) as info:
            await client.generate("q")
    assert info.value.retry_after == 18000
    assert len(server.chat_requests()) == 1


async def test_reset_before_headers_is_retried_or_a_connection_error(server: ScriptedServer) -> None:
    server.queue(Reply(reset_before_headers=True), Reply(reset_before_headers=True))
    async with client_for(server) as client:
        with pytest.raises(APIConnectionError, match="Could not reach"):
            await client.generate("q", max_retries=0)
        assert (await client.generate("again")).text == "echo: again"
    assert len(server.chat_requests()) == 3


async def test_truncated_json_body_from_a_real_server(server: ScriptedServer) -> None:
    server.queue(Reply(body='{"id": "x", "choices": [{"message": {"content": "hal'))
    async with client_for(server) as client:
        with pytest.raises(APIResponseValidationError, match="not valid JSON"):
            await client.generate("q")
    assert len(server.chat_requests()) == 1


async def test_stream_stalling_past_the_idle_timeout(server: ScriptedServer) -> None:
    from diffusiongemma_sdk import APITimeoutError

    server.queue(Reply(events=[chunk(content="before the stall")], stall=30))
    async with client_for(server, backend_options={"stream_idle_timeout": 0.5}) as client:
        started = anyio.current_time()
        with anyio.fail_after(5), pytest.raises(APITimeoutError, match=r"sent nothing for 0.5 s") as info:
            await client.stream("q").final()
        assert anyio.current_time() - started < 3
    assert info.value.partial is not None
    assert info.value.partial.text == "before the stall"
    assert server.wait_for_disconnect()


async def test_total_timeout_per_call(server: ScriptedServer) -> None:
    from diffusiongemma_sdk import APITimeoutError

    server.queue(Reply(body=completion("slow"), delay=30))
    async with client_for(server) as client:
        with anyio.fail_after(5), pytest.raises(APITimeoutError, match=r"within 0\.3 s"):
            await client.generate("q", timeout=0.3)
