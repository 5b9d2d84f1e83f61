"""Fuzzing the OpenAI-compatible server with schemathesis: nothing a client sends may earn a 5xx.

A real uvicorn server over the bundled demo model publishes `GET /openapi.json`; schemathesis (its command line: the
pytest plugin of 4.32 does not run under pytest 9) reads it and sends requests that follow it, deep into generation
(the one model id is in the document), and requests that break it, in its coverage, fuzzing and stateful phases. The
server's request limits are set low, so no request can make the model work for long. Every response is also checked
against the document (status codes, content types, bodies, negative data rejected), which keeps the document honest.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("schemathesis")

from diffusiongemma_sdk.server._inbound import ALWAYS_REFUSED, ChatCompletionBody, RequestLimits
from diffusiongemma_sdk.server._openapi import openapi_schema
from tests.support.serving import Running, serving

SPEC = "torch:demo"
LIMITS = RequestLimits(max_tokens=32, max_denoising_steps=2)  # one 32-token canvas, 2 steps at most
EXAMPLES = 20  # per operation and generation mode, in the fuzzing phase
SEED = 20261127  # the same cases on every run: a regression test, not a lottery
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
    "negative_data_rejection,unsupported_method,allow_header_conformance"
)


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[Running]:
    with serving(
        SPEC,
        client_options={"backend_options": {"default_max_tokens": LIMITS.max_tokens}},
        max_tokens_limit=LIMITS.max_tokens,
        max_denoising_steps_limit=LIMITS.max_denoising_steps,
        max_body_bytes=64 * 1024,
    ) as running:
        yield running


def test_schemathesis_finds_no_server_error(fuzzed_server: Running, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{fuzzed_server.url}/openapi.json",
        f"--checks={CHECKS}",
        f"--max-examples={EXAMPLES}",
        f"--seed={SEED}",
        "--workers=1",
        "--request-timeout=20",
        "--suppress-health-check=all",  # a path parameter that may be any string: most drafts are filtered
        "--generation-database=none",
        "--no-color",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=55, check=False)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-8000:]
    assert "No issues found" in report, report[-8000:]


def test_the_published_document_is_the_servers_own(fuzzed_server: Running) -> None:
    published = httpx.get(f"{fuzzed_server.url}/openapi.json").json()
    capabilities = fuzzed_server.client.capabilities
    assert published == openapi_schema(fuzzed_server.model, LIMITS, capabilities)
    assert set(published["paths"]) == {
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/openapi.json",
    }
    request = published["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert request["model"]["enum"] == [SPEC]
    assert request["max_tokens"]["anyOf"][0]["maximum"] == LIMITS.max_tokens
    steps = published["components"]["schemas"]["DiffusionParams"]["properties"]["max_denoising_steps"]
    assert steps["anyOf"][0]["maximum"] == LIMITS.max_denoising_steps


def test_the_document_lists_every_field_the_server_may_accept() -> None:
    from diffusiongemma_sdk._backend import Capabilities

    capabilities = Capabilities(per_request_diffusion=False, denoise_stream=False)
    document = openapi_schema("m", RequestLimits(), capabilities)
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert set(request["properties"]) == set(ChatCompletionBody.model_fields) - ALWAYS_REFUSED
    # what the backend lacks is allowed only empty, or not at all
    assert request["properties"]["diffusing"]["enum"] == [False]
    assert document["components"]["schemas"]["DiffusionParams"]["maxProperties"] == 0
    assert "securitySchemes" not in document["components"]
    secured = openapi_schema("m", RequestLimits(), capabilities, authenticated=True)
    assert secured["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in secured["paths"]["/health"]["get"]
