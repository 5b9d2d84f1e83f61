from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo model converted to GGUF at F32 and Q8_0, once per session."""
    pytest.importorskip("gguf")
    from diffusiongemma_gguf._convert import convert_checkpoint

    folder = tmp_path_factory.mktemp("gguf")
    return {kind: convert_checkpoint("demo", folder / f"demo-{kind}.gguf", out_type=kind) for kind in ("f32", "q8_0")}


@pytest.fixture(scope="session")
def k_quant_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model whose projections are Q4_K and Q6_K (random valid blocks), the rest F32: every projection
    reads 256 or 512 values a row, whole K-quant blocks."""
    pytest.importorskip("gguf")
    import numpy as np
    from gguf import GGMLQuantizationType

    from diffusiongemma_gguf._convert import convert_checkpoint
    from tests.support.gguf_files import random_k_quant, rewrite_gguf
    from tests.support.tiny_checkpoint import TinySpec, build_tiny_checkpoint

    spec = TinySpec(
        vocab=1024, hidden=256, heads=4, kv_heads=2, head_dim=64, global_head_dim=128, global_kv_heads=1,
        tokenizer="demo",
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("k-quants")
    f32 = convert_checkpoint(str(build_tiny_checkpoint(folder / "tiny", spec)), folder / "f32.gguf", out_type="f32")
    rng = np.random.default_rng(0)

    def k_quant(name: str, data: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
        if data.ndim != 2 or data.shape[-1] % 256 or name.startswith("token_embd"):
            return data, qtype
        kind = GGMLQuantizationType.Q6_K if "attn" in name else GGMLQuantizationType.Q4_K
        return random_k_quant(data.shape[0], data.shape[1], kind, rng), kind

    return rewrite_gguf(f32, folder / "k.gguf", tensor=k_quant)
