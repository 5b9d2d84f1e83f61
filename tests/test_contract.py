"""The request contract: every `GenerationRequest` field, run against every backend the tests can start, is honoured
or refused as that backend declares in its capabilities (docs/request-contract.md).

Backends: a tiny random torch checkpoint, `torch:demo` (whose answers show thinking and tool calls), `gguf:demo` (the
demo converted) on llama.cpp (skipped, saying why, without a DiffusionGemma-enabled llama-cpp-python) and on the
torch engine, `openai:` against
the scripted local server (where honouring a field means sending it: the recorded body shows it), `openai:` against a
real `diffusiongemma serve --backend torch:demo` process, the `test` backend, and the `test` backend declaring that it
supports nothing optional (so that every refusal path runs). A field added to `GenerationRequest` without a rule in
`FIELD_RULES` and a check here fails `test_every_field_is_decided`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

pytest.importorskip("transformers")
pytest.importorskip("starlette")

from diffusiongemma_gguf import llama_cpp_support
from diffusiongemma_gguf._backend import LlamaCppBackend
from diffusiongemma_sdk import (
    APIConnectionError,
    APITimeoutError,
    AsyncDiffusionGemma,
    Capabilities,
    DenoiseStepEvent,
    Generation,
    GenerationRequest,
    ImagePart,
    InternalServerError,
    Message,
    TextPart,
    UnsupportedParameterError,
)
from diffusiongemma_sdk._policy import FIELD_RULES
from diffusiongemma_sdk.testing import DEFAULT_REASONING, TestBackend
from diffusiongemma_torch._backend import TorchBackend
from diffusiongemma_torch.demo.tasks import add
from tests.support.openai_server import Reply, ScriptedServer
from tests.support.serving import serve_command

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
)
TEN_WORDS = "one two three four five six seven eight nine ten"
NEVER_CONFIDENT = {"confidence_threshold": 1e-12, "max_denoising_steps": 400}  # every canvas takes all its steps
DECLARES_NOTHING = Capabilities(
    per_request_diffusion=False,
    denoise_stream=False,
    tools=False,
    tool_choice=(),
    images=False,
    thinking=False,
    seed=False,
    stop=False,
)


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class Point(BaseModel):
    x: int
    y: int


@dataclass
class Harness:
    """A client on one backend, and how its behaviour can be observed."""

    client: AsyncDiffusionGemma
    kind: str  # "torch", "remote" (the body on the wire is what shows), "test"
    prompt: str  # a prompt answered with more than three tokens
    add_prompt: str = "What is 12 + 30?"
    scripted: ScriptedServer | None = None
    demo: bool = False  # the model knows the demo tasks (thinking and tool calls show in its answers)

    @property
    def capabilities(self) -> Capabilities:
        return self.client.capabilities

    def seeded(self, seed: int) -> dict[str, int]:
        """`seed=` for a backend that takes one (the others refuse it: see check_seed)."""
        return {"seed": seed} if self.capabilities.seed else {}

    def body(self) -> dict[str, Any]:
        """The last chat-completions body the scripted server received."""
        assert self.scripted is not None
        body: dict[str, Any] = self.scripted.chat_requests()[-1].body
        return body

    def received(self) -> GenerationRequest:
        """The last request the test backend received."""
        backend = self.client.backend
        assert isinstance(backend, TestBackend)
        return backend.requests[-1]


BACKENDS = [
    "torch-tiny",
    "torch-demo",
    "gguf-demo-llama.cpp",
    "gguf-demo-torch",
    "openai-scripted",
    "openai-serve",
    "test",
    "test-declares-nothing",
]


@pytest.fixture(scope="module")
def serve_demo() -> Iterator[str]:
    """`openai:` base URL of a real `diffusiongemma serve --backend torch:demo` process."""
    with serve_command("torch:demo") as running:
        yield running.base


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@pytest.fixture(params=BACKENDS)
async def harness(
    request: pytest.FixtureRequest, tiny_backend: str, scripted_server: ScriptedServer
) -> AsyncIterator[Harness]:
    kind: str = request.param
    scripted_server.replies.clear()
    sort_prompt = "Sort these numbers: 5 3 9 1 7 2 8 4"
    if kind == "torch-tiny":
        made = Harness(AsyncDiffusionGemma(tiny_backend), "torch", "What is 1 + 2 ?", add_prompt="What is 1 + 2 ?")
    elif kind == "torch-demo":
        made = Harness(AsyncDiffusionGemma("torch:demo"), "torch", sort_prompt, demo=True)
    elif kind == "gguf-demo-llama.cpp":
        support = llama_cpp_support()
        if not support.ready:
            pytest.skip(f"llama.cpp engine: {support.detail}; build it with: {support.fix}")
        made = Harness(AsyncDiffusionGemma("gguf:demo"), "torch", sort_prompt, demo=True)
    elif kind == "gguf-demo-torch":
        made = Harness(AsyncDiffusionGemma("gguf:demo", backend_options={"engine": "torch"}), "torch", sort_prompt)
        made.demo = True
    elif kind == "openai-scripted":
        client = AsyncDiffusionGemma(f"openai:{scripted_server.url}")
        made = Harness(client, "remote", "Say something.", scripted=scripted_server)
    elif kind == "openai-serve":
        made = Harness(AsyncDiffusionGemma(f"openai:{request.getfixturevalue('serve_demo')}"), "torch", sort_prompt)
        made.demo = True
    elif kind == "test":
        made = Harness(AsyncDiffusionGemma(f"test:{TEN_WORDS}"), "test", "Say ten words.")
    else:
        backend = TestBackend(answer=TEN_WORDS, capabilities=DECLARES_NOTHING)
        made = Harness(AsyncDiffusionGemma(backend), "test", "Say ten words.")
    async with made.client:
        await made.client.discover_capabilities()
        yield made


# --- the rules and the docs are complete ----------------------------------------------------------------------------


def test_every_field_is_decided() -> None:
    """Each request field has a rule (what backends declare) and a check below (that they do as declared)."""
    fields = set(GenerationRequest.model_fields)
    assert set(FIELD_RULES) == fields
    assert set(CHECKS) == fields


def test_the_docs_table_is_generated_from_the_capabilities() -> None:
    script = REPO / "docs" / "contract_table.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# --- one check per field ----------------------------------------------------------------------------------------------


async def refused(h: Harness, parameter: str, call: Callable[[AsyncDiffusionGemma], Awaitable[Any]]) -> None:
    """The call raises for `parameter` under the default policy; with unsupported="drop" it runs without it."""
    with pytest.raises(UnsupportedParameterError) as info:
        await call(h.client)
    assert info.value.parameter == parameter
    dropping = AsyncDiffusionGemma(h.client.backend, unsupported="drop")  # shares the backend; not closed here
    await call(dropping)


async def check_messages(h: Harness) -> None:
    with_image = [Message(role="user", content=[TextPart(text="Describe this."), ImagePart(url=PNG)])]

    async def ask(client: AsyncDiffusionGemma) -> Generation:
        return await client.generate(with_image, max_tokens=8, **h.seeded(0))

    if not h.capabilities.images:
        await refused(h, "images", ask)
        if h.kind == "test":
            assert not h.received().messages[0].images  # dropped before the backend saw it
        return
    await ask(h.client)
    if h.kind == "remote":
        assert h.body()["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": PNG}}
    if h.kind == "test":
        assert h.received().messages[0].images == [ImagePart(url=PNG)]


async def check_max_tokens(h: Harness) -> None:
    generation = await h.client.generate(h.prompt, max_tokens=3, **h.seeded(0))
    if h.kind == "remote":
        assert h.body()["max_tokens"] == 3
        return
    assert generation.usage.completion_tokens <= 3
    assert generation.finish_reason == "length"


async def check_thinking(h: Harness) -> None:
    prompt = "Reverse these words: red green blue"

    async def ask(client: AsyncDiffusionGemma, thinking: bool = True) -> Generation:
        return await client.generate(prompt if h.demo else h.prompt, thinking=thinking, max_tokens=48, **h.seeded(0))

    if not h.capabilities.thinking:
        await refused(h, "thinking", ask)
        return
    on, off = await ask(h.client), await ask(h.client, False)
    if h.kind == "remote":
        assert h.scripted is not None
        bodies = [r.body for r in h.scripted.chat_requests()[-2:]]
        assert [b["chat_template_kwargs"] for b in bodies] == [{"enable_thinking": True}, {"enable_thinking": False}]
    elif h.demo:
        assert (on.reasoning, off.reasoning) == ("I will reverse the words.", None)
        assert on.text == off.text == "blue green red"
    elif h.kind == "test":
        assert (on.reasoning, off.reasoning) == (DEFAULT_REASONING, None)
    else:  # a random model: the thinking prompt reached it (same seed, another prompt, another answer)
        assert on.text != off.text


async def check_tools(h: Harness) -> None:
    async def ask(client: AsyncDiffusionGemma) -> Generation:
        return await client.generate(h.add_prompt, tools=[add], max_tokens=48, **h.seeded(0))

    if not h.capabilities.tools:
        await refused(h, "tools", ask)
        return
    generation = await ask(h.client)
    if h.kind == "remote":
        assert [tool["function"]["name"] for tool in h.body()["tools"]] == ["add"]
    elif h.demo:
        assert [(call.name, call.arguments) for call in generation.tool_calls] == [("add", {"a": 12, "b": 30})]
        assert generation.finish_reason == "tool_calls"
    elif h.kind == "test":
        assert [call.name for call in generation.tool_calls] == ["add"]
    else:  # a random model: the declaration reached the prompt
        plain = await h.client.generate(h.add_prompt, max_tokens=48, **h.seeded(0))
        assert generation.text != plain.text


async def check_tool_choice(h: Harness) -> None:
    wire = {"auto": "auto", "none": "none", "required": "required"}
    for form, choice in (("auto", "auto"), ("none", "none"), ("required", "required"), ("named", "multiply")):

        async def ask(client: AsyncDiffusionGemma, choice: str = choice) -> Generation:
            tools = [add, multiply]
            return await client.generate(h.add_prompt, tools=tools, tool_choice=choice, max_tokens=48, **h.seeded(0))

        if not h.capabilities.tools:
            await refused(h, "tools", ask)
            continue
        if form not in h.capabilities.tool_choice:
            await refused(h, "tool_choice", ask)
            continue
        for seed in range(3 if h.kind == "torch" else 1):
            generation = await h.client.generate(
                h.add_prompt, tools=[add, multiply], tool_choice=choice, max_tokens=48, **h.seeded(seed)
            )
            if h.kind == "remote":
                expected = wire.get(choice, {"type": "function", "function": {"name": choice}})
                assert h.body()["tool_choice"] == expected
                break
            names = [call.name for call in generation.tool_calls]
            if form == "none":
                assert names == []
            elif form == "required":
                assert names
                assert set(names) <= {"add", "multiply"}
            elif form == "named":
                assert names == ["multiply"]
            elif h.demo:  # auto: the demo model calls add by itself
                assert names == ["add"]


async def check_diffusion(h: Harness) -> None:
    async def ask(client: AsyncDiffusionGemma) -> Generation:
        return await client.generate(h.prompt, max_tokens=40, **h.seeded(0), diffusion={"max_denoising_steps": 1})

    if not h.capabilities.per_request_diffusion:
        await refused(h, "diffusion", ask)
        return
    generation = await ask(h.client)
    assert generation.usage.canvases
    assert generation.usage.denoising_steps == generation.usage.canvases  # one step a canvas


async def check_seed(h: Harness) -> None:
    async def ask(client: AsyncDiffusionGemma, seed: int = 5) -> Generation:
        return await client.generate(h.prompt, max_tokens=24, seed=seed)

    if not h.capabilities.seed:
        await refused(h, "seed", ask)
        return
    first, again = await ask(h.client), await ask(h.client)
    if h.kind == "remote":
        assert h.body()["seed"] == 5
    assert first.text == again.text
    if h.client.backend.name.startswith("torch:/"):  # a random model: another seed, another answer
        assert (await ask(h.client, 6)).text != first.text


async def check_stop(h: Harness) -> None:
    full = await h.client.generate(h.prompt, max_tokens=24, **h.seeded(3))
    words = full.text.split()
    stop = " " + words[len(words) // 2] if len(words) > 1 else "END"

    async def ask(client: AsyncDiffusionGemma) -> Generation:
        return await client.generate(h.prompt, max_tokens=24, **h.seeded(3), stop=[stop])

    if not h.capabilities.stop:
        await refused(h, "stop", ask)
        return
    cut = await ask(h.client)
    if h.kind == "remote":
        assert h.body()["stop"] == [stop]
        return
    assert cut.text == full.text[: full.text.find(stop)].rstrip()
    assert cut.finish_reason == "stop"


async def check_response_schema(h: Harness) -> None:
    request = h.client.build_request("Give me a point as JSON.", max_tokens=48, **h.seeded(0))
    request = request.model_copy(update={"response_schema": Point.model_json_schema()})

    async def ask(client: AsyncDiffusionGemma) -> Generation:
        return await client.send(request)

    if not h.capabilities.native_structured_output:
        await refused(h, "response_schema", ask)
        if h.kind == "remote":
            assert "response_format" not in h.body()
        return
    generation = await ask(h.client)
    Point.model_validate_json(generation.text)  # the answer matches the schema


async def check_drafts(h: Harness) -> None:
    async def stream(client: AsyncDiffusionGemma, drafts: bool = True) -> list[Any]:
        async with client.stream(h.prompt, max_tokens=24, **h.seeded(0), drafts=drafts) as events:
            return [event async for event in events]

    if not h.capabilities.denoise_stream:
        await refused(h, "drafts", stream)
        if h.kind == "remote":
            assert "diffusing" not in h.body()
        return
    with_drafts, plain = await stream(h.client), await stream(h.client, drafts=False)
    assert any(isinstance(event, DenoiseStepEvent) for event in with_drafts)
    assert not any(isinstance(event, DenoiseStepEvent) for event in plain)


async def check_timeout(h: Harness) -> None:
    """The deadline of the whole call, on a call that would take far longer; then the backend serves again."""
    slow: dict[str, Any] = {"max_tokens": 24}
    if h.kind == "torch":
        slow = {"max_tokens": 64, "diffusion": NEVER_CONFIDENT}  # hundreds of steps a canvas
    elif h.kind == "remote":
        assert h.scripted is not None
        h.scripted.queue(Reply(events=[{"choices": []}] * 3, delay=3))
    else:
        backend = h.client.backend
        assert isinstance(backend, TestBackend)
        backend.event_delay = 0.3
    with anyio.fail_after(10):
        with pytest.raises(APITimeoutError, match=r"within 0\.2 s"):
            await h.client.generate(h.prompt, timeout=0.2, **slow)
        if h.kind == "remote":
            assert h.scripted is not None
            h.scripted.queue(Reply(events=[{"choices": []}] * 3, delay=3))
        async with h.client.stream(h.prompt, timeout=0.2, **slow) as stream:
            with pytest.raises(APITimeoutError) as info:
                await stream.final()
        assert info.value.partial is not None
        assert info.value.partial.finish_reason == "cancelled"
    if h.kind == "remote":
        assert h.scripted is not None
        assert h.scripted.wait_for_disconnect()  # the connection was closed
    if isinstance(h.client.backend, TestBackend):
        h.client.backend.event_delay = 0.0
    if isinstance(h.client.backend, TorchBackend):
        scheduler = h.client.backend._scheduler
        assert not scheduler.pool.rows  # the engine is free: no row is left in it
        assert not scheduler.waiting
    if isinstance(h.client.backend, LlamaCppBackend):
        assert not h.client.backend._engine.locked()  # the engine is free
    with anyio.fail_after(30):
        assert await h.client.generate(h.prompt, max_tokens=8, **h.seeded(0))  # and serves the next request


async def check_max_retries(h: Harness) -> None:
    """Transient failures are retried `max_retries` times, whatever the backend (where one can be made to fail)."""
    if h.kind == "remote":
        assert h.scripted is not None
        before = len(h.scripted.chat_requests())
        h.scripted.queue(Reply(status=503, body={"error": {"message": "busy"}}))
        await h.client.generate(h.prompt, max_retries=1)
        assert len(h.scripted.chat_requests()) - before == 2
        h.scripted.queue(Reply(status=503, body={"error": {"message": "busy"}}))
        with pytest.raises(InternalServerError):
            await h.client.generate(h.prompt, max_retries=0)
        return
    if h.kind == "test":  # a backend of the same kind, failing once
        for retries in (1, 0):
            flaky = TestBackend([APIConnectionError("reset"), "fine"], capabilities=h.capabilities)
            async with AsyncDiffusionGemma(flaky) as client:
                if retries:
                    assert (await client.generate(h.prompt, max_retries=retries)).text == "fine"
                else:
                    with pytest.raises(APIConnectionError):
                        await client.generate(h.prompt, max_retries=retries)
        return
    # nothing transient can happen inside a local engine: the field is accepted and changes nothing
    assert (await h.client.generate(h.prompt, max_tokens=8, **h.seeded(0), max_retries=0)).usage.completion_tokens


CHECKS: dict[str, Callable[[Harness], Awaitable[None]]] = {
    "messages": check_messages,
    "max_tokens": check_max_tokens,
    "thinking": check_thinking,
    "tools": check_tools,
    "tool_choice": check_tool_choice,
    "diffusion": check_diffusion,
    "seed": check_seed,
    "stop": check_stop,
    "response_schema": check_response_schema,
    "drafts": check_drafts,
    "timeout": check_timeout,
    "max_retries": check_max_retries,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("field", list(GenerationRequest.model_fields))
async def test_field_is_honoured_or_refused_as_declared(harness: Harness, field: str) -> None:
    await CHECKS[field](harness)
