from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.openai_server import ScriptedServer

ENV_VARS = ("DIFFUSIONGEMMA_BACKEND", "DIFFUSIONGEMMA_API_KEY", "NVIDIA_API_KEY", "NVIDIA_BASE_URL")
TERMINAL_VARS = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's keys or backend choice, and choose themselves whether rich draws for a
    terminal, whatever the developer's shell says."""
    for name in ENV_VARS + TERMINAL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny_backend(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`torch:<dir>` of a tiny random checkpoint, built once per session."""
    pytest.importorskip("transformers")
    from tests.support.tiny_checkpoint import build_tiny_checkpoint

    return f"torch:{build_tiny_checkpoint(tmp_path_factory.mktemp('tiny'))}"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running
