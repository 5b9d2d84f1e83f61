from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.openai_server import ScriptedServer

ENV_VARS = ("DIFFUSIONGEMMA_BACKEND", "DIFFUSIONGEMMA_API_KEY", "NVIDIA_API_KEY", "NVIDIA_BASE_URL")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's keys or backend choice."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running
