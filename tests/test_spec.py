"""Backend specs: parsing, the default from the environment, entry-point plugins, missing distributions."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pytest

from diffusiongemma_sdk import AsyncDiffusionGemma, BackendNotInstalledError, ConfigurationError
from diffusiongemma_sdk import _spec as spec_module
from diffusiongemma_sdk._spec import BackendSpec

pytestmark = pytest.mark.anyio


def test_parse() -> None:
    assert BackendSpec.parse("nim") == BackendSpec("nim", "")
    assert BackendSpec.parse("NIM:google/x") == BackendSpec("nim", "google/x")
    parsed = BackendSpec.parse("openai:http://127.0.0.1:8000/v1#m")
    assert (parsed.scheme, parsed.target) == ("openai", "http://127.0.0.1:8000/v1#m")
    assert str(parsed) == "openai:http://127.0.0.1:8000/v1#m"
    with pytest.raises(ConfigurationError, match="scheme"):
        BackendSpec.parse(":x")


def test_no_backend_configured_lists_the_choices() -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncDiffusionGemma()
    message = str(info.value)
    assert "DIFFUSIONGEMMA_BACKEND" in message
    assert "NVIDIA_API_KEY" in message
    for choice in ("nim", "openai:<base_url>", "torch:", "gguf:"):
        assert choice in message


def test_nvidia_key_selects_nim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-x")
    assert AsyncDiffusionGemma().backend.name == "nim:google/diffusiongemma-26b-a4b-it"
    assert AsyncDiffusionGemma("nim:google/other").backend.name == "nim:google/other"


def test_environment_spec_wins_over_nvidia_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-x")
    monkeypatch.setenv("DIFFUSIONGEMMA_BACKEND", "openai:http://127.0.0.1:1/v1")
    assert AsyncDiffusionGemma().backend.name == "openai:http://127.0.0.1:1/v1"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nim", "NVIDIA_API_KEY"),
        ("openai:", "needs a base URL"),
        ("openai:localhost:8000", "needs a base URL"),
        ("bogus:x", "Unknown backend scheme 'bogus'"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        AsyncDiffusionGemma(spec)


@pytest.mark.parametrize(
    ("scheme", "distribution"), [("torch", "diffusiongemma-torch"), ("gguf", "diffusiongemma-gguf")]
)
def test_missing_distribution_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, scheme: str, distribution: str
) -> None:
    monkeypatch.setattr(spec_module, "entry_points", lambda group: [])
    with pytest.raises(BackendNotInstalledError, match=f"pip install {distribution}"):
        AsyncDiffusionGemma(f"{scheme}:demo")


def test_installed_backend_distributions_register_their_scheme() -> None:
    names = {ep.name for ep in spec_module.entry_points(group=spec_module.ENTRY_POINT_GROUP)}
    assert {"torch", "gguf"} <= names


PLUGIN = """
from collections.abc import AsyncIterator

from diffusiongemma_sdk import Backend, Capabilities, DoneEvent, Generation, GenerationRequest, StreamEvent


class ReverseBackend(Backend):
    def __init__(self, target, options):
        self.name = f"reverse:{target}"
        self.timeout = options.timeout

    @property
    def capabilities(self):
        return Capabilities(per_request_diffusion=True, denoise_stream=False)

    async def generate(self, request: GenerationRequest) -> Generation:
        return Generation(text=request.messages[-1].text[::-1], backend=self.name)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        yield DoneEvent(generation=await self.generate(request))
"""


async def test_third_party_backend_plugs_in_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "reverse_plugin.py").write_text(PLUGIN)
    dist_info = tmp_path / "reverse_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: reverse-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent("""
        [diffusiongemma_sdk.backends]
        reverse = reverse_plugin:ReverseBackend
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    async with AsyncDiffusionGemma("reverse:x", timeout=12) as client:
        assert client.backend.name == "reverse:x"
        assert (await client.generate("abc", diffusion={"max_denoising_steps": 4})).text == "cba"
        async with client.stream("xyz") as stream:
            assert (await stream.final()).text == "zyx"
