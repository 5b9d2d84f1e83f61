"""Client-side rate and concurrency limits of the remote backend."""

from __future__ import annotations

import anyio
import pytest

from diffusiongemma_sdk import AsyncDiffusionGemma, ConfigurationError
from diffusiongemma_sdk._remote import RemoteBackend
from diffusiongemma_sdk._remote.limits import RequestRateLimiter
from tests.support.openai_server import ScriptedServer

pytestmark = pytest.mark.anyio


async def test_rate_limiter_spaces_requests_over_the_window() -> None:
    limiter = RequestRateLimiter(2, period=0.3)
    started = anyio.current_time()
    stamps = []
    for _ in range(5):
        await limiter.acquire()
        stamps.append(anyio.current_time() - started)
    assert stamps[1] < 0.1
    assert 0.3 <= stamps[2] < 0.45
    assert 0.6 <= stamps[4] < 0.8


async def test_waiting_for_the_rate_limiter_is_cancellable_and_uses_no_slot() -> None:
    limiter = RequestRateLimiter(1, period=0.4)
    await limiter.acquire()
    with anyio.move_on_after(0.05) as scope:
        await limiter.acquire()
    assert scope.cancelled_caught
    await anyio.sleep(0.4)
    with anyio.fail_after(0.1):  # the cancelled waiter took nothing: the next slot is free at once
        await limiter.acquire()


def test_rate_limit_defaults_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", "k")
    nim = AsyncDiffusionGemma("nim").backend
    assert isinstance(nim, RemoteBackend)
    assert nim.requests_per_minute == 40
    tuned = AsyncDiffusionGemma("nim", backend_options={"requests_per_minute": None}).backend
    assert isinstance(tuned, RemoteBackend)
    assert tuned.requests_per_minute is None
    local = AsyncDiffusionGemma("openai:http://127.0.0.1:1/v1").backend
    assert isinstance(local, RemoteBackend)
    assert local.requests_per_minute is None
    with pytest.raises(ConfigurationError, match="Known options: stream_idle_timeout, requests_per_minute"):
        AsyncDiffusionGemma("openai:http://127.0.0.1:1/v1", backend_options={"rpm": 3})
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        AsyncDiffusionGemma("openai:http://127.0.0.1:1/v1", backend_options={"max_concurrency": 0})


async def test_concurrency_limit_holds_across_a_batch(server: ScriptedServer) -> None:
    server.default_delay = 0.1
    async with AsyncDiffusionGemma(f"openai:{server.url}#m", backend_options={"max_concurrency": 2}) as client:
        assert client.capabilities.max_concurrency == 2
        results = await client.generate_batch([str(i) for i in range(6)], concurrency=6)
    assert [r.text for r in results] == [f"echo: {i}" for i in range(6)]
    assert server.max_active == 2
