"""The `chat`, `bench`, `models`, `doctor` and `serve` commands, run in-process with typer's CliRunner against real
backends (the scripted OpenAI-compatible server, a tiny torch checkpoint), and as a process where signals, stdin or a
port matter."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from diffusiongemma_gguf._support import PR_FUNCTIONS
from diffusiongemma_sdk import Generation
from diffusiongemma_sdk._cli import app
from diffusiongemma_sdk._cli.bench import FALLBACK_PROMPTS, BenchReport
from diffusiongemma_sdk._cli.doctor import Check, Diagnosis
from diffusiongemma_sdk._cli.models import Listing
from diffusiongemma_sdk._remote import NIM_MODEL, OPENAI_COMPATIBLE_CAPABILITIES
from diffusiongemma_sdk.server._defaults import (
    DEFAULT_GRACEFUL_SHUTDOWN_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DENOISING_STEPS_LIMIT,
    DEFAULT_MAX_TOKENS_LIMIT,
)
from tests.support.cli import STATS, TERMINAL, failure_lines
from tests.support.openai_server import Reply, ScriptedServer, chunk

WIDE = {"COLUMNS": "200"}


def invoke(*args: str, env: Mapping[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={**WIDE, **(env or {})}, input=stdin)


def spec(server: ScriptedServer) -> str:
    return f"openai:{server.url}#test-model"


def messages(server: ScriptedServer) -> list[list[dict[str, Any]]]:
    """The messages of each chat request the server received, in order."""
    return [request.body["messages"] for request in server.chat_requests()]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def echoed(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": f"echo: {text}"}


def usage_chunk(usage: dict[str, int]) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "choices": [], "usage": usage}


@pytest.fixture
def closed_url() -> str:
    """A local base URL where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --- chat ----------------------------------------------------------------------------------------------------------


def test_chat_sends_the_history_and_reset_forgets_it(server: ScriptedServer) -> None:
    result = invoke("chat", "--backend", spec(server), "--system", "Be brief.", stdin="hello\nsecond\n/reset\nthird\n")
    assert result.exit_code == 0, result.output  # the end of stdin (Ctrl-D) leaves
    assert result.stdout == "echo: hello\necho: second\necho: third\n"
    system = {"role": "system", "content": "Be brief."}
    assert messages(server) == [
        [system, user("hello")],
        [system, user("hello"), echoed("hello"), user("second")],
        [system, user("third")],
    ]
    assert "The conversation is forgotten." in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("3 tokens")]) == 3


def test_chat_thinking_flag_toggle_help_and_exit(server: ScriptedServer) -> None:
    lines = "one\n/thinking\ntwo\n/help\n/nope\n\n/exit\nnever sent\n"
    result = invoke("chat", "--backend", spec(server), "--thinking", stdin=lines)
    assert result.exit_code == 0, result.output
    assert [r.body["chat_template_kwargs"] for r in server.chat_requests()] == [
        {"enable_thinking": True},
        {"enable_thinking": False},
    ]
    assert messages(server)[-1] == [user("one"), echoed("one"), user("two")]
    assert "Thinking is off." in result.stderr
    assert "/reset" in result.stderr  # the help
    assert "Unknown command /nope" in result.stderr
    assert result.stdout == "echo: one\necho: two\n"


def test_chat_reports_a_failed_request_and_goes_on(server: ScriptedServer) -> None:
    server.queue(Reply(status=400, body={"error": {"message": "this request is malformed"}}))
    result = invoke("chat", "--backend", spec(server), stdin="first\nsecond\n")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert "this request is malformed" in error
    assert any(line.startswith("hint:") for line in result.stderr.splitlines())
    assert messages(server)[-1] == [user("second")]  # the failed turn is not in the history
    assert result.stdout == "echo: second\n"


def test_chat_streams_into_the_live_view_on_a_terminal(server: ScriptedServer) -> None:
    result = invoke("chat", "--backend", spec(server), stdin="hi\n", env=TERMINAL)
    assert result.exit_code == 0, result.output
    assert server.chat_requests()[-1].body["stream"] is True
    assert result.stdout.endswith("echo: hi\n")


def test_chat_on_a_tiny_checkpoint_draws_the_canvases(tiny_backend: str) -> None:
    options = ["--backend", tiny_backend, "--max-tokens", "16", "--seed", "1"]
    first = "Sort these numbers: 3 1 2"
    expected = Generation.model_validate_json(invoke("generate", *options, "--json", first).stdout)
    result = invoke("chat", *options, stdin=f"{first}\nReverse these words: red green\n", env=TERMINAL)
    assert result.exit_code == 0, result.output
    assert "canvas 1 | step" in result.stdout
    assert expected.text + "\n" in result.stdout  # the same seed and prompt: the same first answer
    assert len(STATS.findall(result.stderr)) == 2, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "nope:x"], "Unknown backend scheme 'nope'."),
        (["--backend", "nope:x", "--max-tokens", "0"], "--max-tokens must be 1 or more, not 0."),
    ],
    ids=["unknown-scheme", "max-tokens-0"],
)
def test_chat_errors_are_one_line_and_a_hint(args: list[str], message: str) -> None:
    error, _ = failure_lines(invoke("chat", *args, stdin="hello\n"))
    assert message in error


def test_chat_ends_on_an_error_that_is_not_the_servers(closed_url: str) -> None:
    result = invoke("chat", "--backend", f"openai:{closed_url}#m", "--steps", "4", stdin="hello\nagain\n")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    banner, error, hint = result.stderr.splitlines()
    assert banner.startswith("Chatting with")
    assert error.startswith("error: ")
    assert "does not support --steps" in error
    assert hint.startswith("hint: ")


def chat_process(backend: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "diffusiongemma_sdk._cli", "chat", "--backend", backend],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell may have ignored it
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_chat_ctrl_c_at_the_prompt_exits_130_at_once(closed_url: str) -> None:
    with chat_process(f"openai:{closed_url}#m") as process:
        assert process.stderr is not None
        assert process.stderr.readline().startswith("Chatting with")  # waiting for a line
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130  # stdin stays open: the reader thread must not hold the exit
        assert process.stderr.read() == ""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_chat_reads_a_piped_stdin_in_a_process(server: ScriptedServer) -> None:
    with chat_process(spec(server)) as process:
        stdout, _ = process.communicate("hello\nlast line without its end", timeout=60)
    assert process.returncode == 0
    assert stdout == "echo: hello\necho: last line without its end\n"
    assert messages(server)[-1][:2] == [user("hello"), echoed("hello")]


# --- models --------------------------------------------------------------------------------------------------------


def test_models_lists_the_server_models_and_capabilities(server: ScriptedServer) -> None:
    result = invoke("models", "--backend", spec(server))
    assert result.exit_code == 0, result.output
    assert f"backend: {spec(server)}" in result.stdout
    for text in ("test-model", "per_request_diffusion", "max_concurrency", "unknown"):
        assert text in result.stdout, text
    listing = Listing.model_validate_json(invoke("models", "--backend", spec(server), "--json").stdout)
    assert [model.id for model in listing.models] == ["test-model"]
    assert listing.capabilities == OPENAI_COMPATIBLE_CAPABILITIES


def test_models_of_a_local_checkpoint(tiny_backend: str) -> None:
    result = invoke("models", "--backend", tiny_backend, "--json")
    assert result.exit_code == 0, result.output
    listing = Listing.model_validate_json(result.stdout)
    assert [model.id for model in listing.models] == [tiny_backend]
    assert listing.capabilities.per_request_diffusion
    assert listing.capabilities.max_concurrency == 1


def test_backend_options_reach_the_backend(tiny_backend: str, server: ScriptedServer) -> None:
    """`-o KEY=VALUE` values are JSON when they parse; every command takes them."""
    batched = invoke("models", "--backend", tiny_backend, "-o", "max_batch=4", "--json")
    assert batched.exit_code == 0, batched.output
    assert Listing.model_validate_json(batched.stdout).capabilities.max_concurrency == 4
    limited = invoke("models", "--backend", spec(server), "--backend-option", "max_concurrency=2", "--json")
    assert Listing.model_validate_json(limited.stdout).capabilities.max_concurrency == 2
    error, hint = failure_lines(invoke("generate", "hi", "--backend", tiny_backend, "-o", "max_batch"))
    assert error == "error: --backend-option takes KEY=VALUE (for example max_batch=16), not 'max_batch'."
    error, hint = failure_lines(invoke("bench", "--backend", tiny_backend, "-o", "max_batch=many"))
    assert "max_batch" in error
    assert "--backend-option" in hint


def test_models_errors_are_one_line_and_a_hint(closed_url: str) -> None:
    error, hint = failure_lines(invoke("models", "--backend", "nim"))
    assert "NVIDIA_API_KEY" in error
    error, hint = failure_lines(invoke("models", "--backend", f"openai:{closed_url}"))
    assert "running and reachable" in hint


# --- bench ---------------------------------------------------------------------------------------------------------


def test_bench_json_counts_every_request(server: ScriptedServer) -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    events = [chunk(content="three words here"), chunk(finish_reason="stop"), usage_chunk(usage), "[DONE]"]
    server.queue(*[Reply(events=events, delay=0.05)] * 5)  # slow enough for two to overlap
    result = invoke("bench", "--backend", spec(server), "--prompts", "5", "--concurrency", "2", "--json")
    assert result.exit_code == 0, result.output
    report = BenchReport.model_validate_json(result.stdout)
    assert (report.backend, report.concurrency, len(report.requests)) == (spec(server), 2, 5)
    for measurement in report.requests:
        assert (measurement.completion_tokens, measurement.content_tokens) == (3, 3)
        assert measurement.ttft_s is not None
        assert 0 < measurement.ttft_s <= measurement.seconds
        assert measurement.tokens_per_s == pytest.approx(3 / measurement.seconds)
        assert measurement.canvases is None
        assert measurement.tokens_per_forward is None
    total = report.total
    assert total.content_tokens == 15
    assert total.tokens_per_s == pytest.approx(15 / total.seconds)
    assert total.seconds < sum(m.seconds for m in report.requests)  # two at a time
    assert 1 < server.max_active <= 2
    requests = server.chat_requests()
    assert all(r.body["stream"] and r.body["chat_template_kwargs"] == {"enable_thinking": False} for r in requests)
    assert sorted(m[-1]["content"] for m in messages(server)) == sorted(
        FALLBACK_PROMPTS[i % len(FALLBACK_PROMPTS)] for i in range(5)
    )


def test_bench_table_and_a_prompt_of_ones_own(server: ScriptedServer) -> None:
    result = invoke("bench", "--backend", spec(server), "--prompts", "2", "--prompt", "count to 3")
    assert result.exit_code == 0, result.output
    for text in ("tokens/s", "TTFT s", "steps/canvas", "tokens/forward", "all", "2 generations, 1 at a time"):
        assert text in result.stdout, text
    assert messages(server) == [[user("count to 3")]] * 2


def test_bench_does_not_count_answers_that_carry_reasoning(server: ScriptedServer) -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    events = [chunk(reasoning_content="let me think"), chunk(content="4"), chunk(finish_reason="stop")]
    server.queue(Reply(events=[*events, usage_chunk(usage), "[DONE]"]))
    result = invoke("bench", "--backend", spec(server), "--prompts", "2", "--json")
    assert result.exit_code == 0, result.output
    report = BenchReport.model_validate_json(result.stdout)
    thought, plain = report.requests
    assert (thought.completion_tokens, thought.content_tokens, thought.tokens_per_s) == (9, None, None)
    assert plain.content_tokens == 3
    assert (report.total.completion_tokens, report.total.content_tokens, report.total.tokens_per_s) == (12, None, None)


def test_bench_on_a_tiny_checkpoint_reports_the_diffusion_statistics(tiny_backend: str) -> None:
    args = ["bench", "--backend", tiny_backend, "--prompts", "2", "--max-tokens", "40", "--steps", "3", "--seed", "1"]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    report = BenchReport.model_validate_json(result.stdout)
    for measurement in [*report.requests, report.total]:
        assert measurement.canvases is not None
        assert measurement.denoising_steps is not None
        assert measurement.steps_per_canvas == measurement.denoising_steps / measurement.canvases <= 3
        assert measurement.tokens_per_forward == measurement.completion_tokens / measurement.denoising_steps
        assert measurement.content_tokens in (None, measurement.completion_tokens)
    assert report.total.canvases == sum(m.canvases or 0 for m in report.requests)
    table = invoke(*args)
    assert table.exit_code == 0, table.output
    assert f"{tiny_backend}, 2 generations, 1 at a time" in table.stdout
    assert "serves 1 at a time" not in table.stderr
    crowded = invoke(*args, "--concurrency", "2", "--json")
    assert "serves 1 at a time; the other requests wait" in crowded.stderr


def test_bench_prompts_are_the_demo_tasks_on_the_demo_model(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("diffusiongemma_torch")
    from diffusiongemma_sdk._cli.bench import _prompts

    prompts = _prompts(4, None, "torch:demo", seed=3)
    assert prompts == _prompts(4, None, "torch:demo", seed=3)  # seeded
    texts = [prompt[0].content for prompt in prompts if isinstance(prompt, list)]
    assert [text.split(":")[0] for text in texts] == ["Sort these numbers", "Reverse these words"] * 2
    monkeypatch.setitem(sys.modules, "diffusiongemma_torch.demo.tasks", None)  # not installed
    assert _prompts(5, None, "torch:demo", seed=3) == [*FALLBACK_PROMPTS, FALLBACK_PROMPTS[0]]
    assert _prompts(2, "hi", "torch:demo", seed=3) == ["hi", "hi"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompts", "0"], "--prompts must be 1 or more, not 0."),
        (["--concurrency", "0"], "--concurrency must be 1 or more, not 0."),
        (["--steps", "0"], "--steps must be 1 or more, not 0."),
    ],
)
def test_bench_refuses_bad_counts(args: list[str], message: str) -> None:
    error, _ = failure_lines(invoke("bench", "--backend", "nope:x", *args))
    assert error == f"error: {message}"


def test_bench_stops_at_the_first_failure(server: ScriptedServer) -> None:
    server.queue(Reply(status=400, body={"error": {"message": "no more"}}))
    error, _ = failure_lines(invoke("bench", "--backend", spec(server), "--prompts", "3"))
    assert "no more" in error


# --- doctor --------------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, closed_url: str) -> str:
    """The endpoint check goes to a closed local port, never to the network."""
    monkeypatch.setenv("NVIDIA_BASE_URL", closed_url)
    return closed_url


def diagnose(env: Mapping[str, str] | None = None) -> tuple[Result, dict[str, Check]]:
    result = invoke("doctor", "--json", env=env)
    assert "Traceback" not in result.output
    diagnosis = Diagnosis.model_validate_json(result.stdout)
    assert diagnosis.ok == (result.exit_code == 0)
    return result, {check.name: check for check in diagnosis.checks}


@pytest.fixture
def nim_server() -> Iterator[ScriptedServer]:
    with ScriptedServer(model=NIM_MODEL) as running:
        yield running


def test_doctor_with_the_endpoint_answering_never_shows_the_key(nim_server: ScriptedServer) -> None:
    secret = "nvapi-do-not-print-me-1234"
    env = {"NVIDIA_BASE_URL": nim_server.url, "NVIDIA_API_KEY": secret}
    result, checks = diagnose(env)
    assert result.exit_code == 0, result.output
    assert checks["NVIDIA_API_KEY"].status == "ok"
    assert checks["endpoint"].status == "ok"
    assert checks["endpoint"].detail == f"{nim_server.url} answers and lists {NIM_MODEL}"
    assert checks["ready"].detail.endswith("nim (hosted)")
    assert nim_server.requests[-1].headers["authorization"] == f"Bearer {secret}"
    plain = invoke("doctor", env=env)
    assert plain.exit_code == 0
    assert "Required checks pass (python, ready)." in plain.stdout
    for output in (result.output, plain.output):
        assert secret not in output
        assert secret[-4:] not in output


def test_doctor_endpoint_that_does_not_list_the_model(server: ScriptedServer) -> None:
    _, checks = diagnose({"NVIDIA_BASE_URL": server.url, "NVIDIA_API_KEY": "k"})
    assert checks["endpoint"].status == "warn"
    assert checks["endpoint"].fix == "name a model it lists: --backend nim:MODEL"


def test_doctor_offline_is_a_problem_with_a_fix_not_a_traceback(offline: str) -> None:
    result, checks = diagnose()
    assert result.exit_code == 0  # the torch engine is installed here: a backend is ready
    assert checks["endpoint"].status == "warn"
    assert checks["endpoint"].detail.startswith(f"{offline} does not answer: ")
    assert "network" in str(checks["endpoint"].fix)
    assert (checks["NVIDIA_API_KEY"].status, checks["NVIDIA_API_KEY"].detail) == ("warn", "not set")
    assert [name for name, check in checks.items() if check.required] == ["python", "ready"]
    plain = invoke("doctor")
    assert "Traceback" not in plain.output
    assert re.search(r"^warn +endpoint +http", plain.stdout, re.MULTILINE), plain.stdout
    assert "fix: check the network connection" in plain.stdout


def test_doctor_fails_when_no_backend_is_ready(offline: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # torch is not installed
    result, checks = diagnose()
    assert result.exit_code == 1
    assert (checks["torch"].status, checks["cuda"].status, checks["ready"].status) == ("warn", "unknown", "fail")
    assert "pip install diffusiongemma-torch" in str(checks["ready"].fix)
    plain = invoke("doctor")
    assert plain.exit_code == 1
    assert plain.stdout.splitlines()[-1] == "Required checks failed: ready."


def test_doctor_cpu_torch(offline: str) -> None:
    pytest.importorskip("torch")
    _, checks = diagnose()
    import torch

    assert checks["torch"].detail == torch.__version__
    if not torch.cuda.is_available():
        assert checks["cuda"].status == "warn"
        assert "CUDA build of torch" in str(checks["cuda"].fix)
    assert "nim (built in), openai (built in)" in checks["backends"].detail


def test_doctor_reports_each_gpu_with_its_memory(offline: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gib = 2**30
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        get_device_name=lambda index: f"GPU{index}",
        mem_get_info=lambda index: (60 * gib, 80 * gib),
    )
    fake = types.SimpleNamespace(__version__="9.9.9", cuda=cuda, version=types.SimpleNamespace(cuda="12.8"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    _, checks = diagnose()
    assert checks["cuda"].status == "ok"
    assert checks["cuda"].detail == (
        "CUDA 12.8; 0: GPU0, 80.0 GiB total, 60.0 GiB free; 1: GPU1, 80.0 GiB total, 60.0 GiB free"
    )


def fake_llama_cpp(library: object | None) -> types.ModuleType:
    module = types.ModuleType("llama_cpp")
    module.__version__ = "0.3.36"  # type: ignore[attr-defined]
    module.llama_cpp = types.SimpleNamespace(_lib=library)  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    ("module", "status", "words"),
    [
        (None, "warn", "llama-cpp-python is not installed"),
        (fake_llama_cpp(types.SimpleNamespace(llama_decode=0)), "warn", "0.3.36: its llama.cpp lacks DiffusionGemma"),
        (fake_llama_cpp(types.SimpleNamespace(**dict.fromkeys(PR_FUNCTIONS, 0))), "ok", "built with DiffusionGemma"),
        (fake_llama_cpp(None), "unknown", "cannot tell"),
    ],
    ids=["not-installed", "stock-build", "pr-build", "unknown"],
)
def test_doctor_llama_cpp(
    offline: str, monkeypatch: pytest.MonkeyPatch, module: types.ModuleType | None, status: str, words: str
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    _, checks = diagnose()
    assert checks["llama.cpp"].status == status
    assert words in checks["llama.cpp"].detail
    assert (checks["llama.cpp"].fix is not None) == (status != "ok")
    if status == "warn":  # what the gguf: backend's own error says
        assert "diffusiongemma build-llama-cpp" in (checks["llama.cpp"].fix or "")
        assert "-o engine=torch" in (checks["llama.cpp"].fix or "")


# --- serve ---------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_serve_answers_with_the_key_from_the_environment_and_its_limits(server: ScriptedServer) -> None:
    pytest.importorskip("uvicorn")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        [
            *[sys.executable, "-m", "diffusiongemma_sdk._cli", "serve", "--backend", spec(server), "--port", str(port)],
            *["--model-id", "shared-box", "--max-tokens-limit", "64", "--shutdown-timeout", "2"],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DIFFUSIONGEMMA_SERVER_API_KEY": "s3cret"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as process:
        deadline = time.monotonic() + 30
        while not _answers(f"{base}/health"):
            assert process.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{base}/v1/models").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        listed = httpx.get(f"{base}/v1/models", headers=auth)
        assert [model["id"] for model in listed.json()["data"]] == ["shared-box"]
        body = {"model": "shared-box", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}
        too_long = httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth)
        assert too_long.status_code == 400
        assert "64" in too_long.json()["error"]["message"]
        assert server.chat_requests() == []  # refused before it reached the backend
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert process.stderr is not None
        assert "s3cret" not in process.stderr.read()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_passes_its_options_on(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvicorn")
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        "diffusiongemma_sdk.server.run_server",
        lambda backend, *, host, port, api_key, **limits: calls.append((backend, host, port, api_key, limits)),
    )
    defaults = {
        "backend_options": None,
        "model_id": None,
        "max_tokens_limit": DEFAULT_MAX_TOKENS_LIMIT,
        "max_denoising_steps_limit": DEFAULT_MAX_DENOISING_STEPS_LIMIT,
        "max_body_bytes": DEFAULT_MAX_BODY_BYTES,
        "timeout_graceful_shutdown": DEFAULT_GRACEFUL_SHUTDOWN_S,
    }
    assert invoke("serve", "--backend", "torch:demo").exit_code == 0
    assert invoke("serve", "--host", "0.0.0.0", "--port", "9000", "--api-key", "k").exit_code == 0
    assert invoke("serve", env={"DIFFUSIONGEMMA_SERVER_API_KEY": "from-env"}).exit_code == 0
    limits = ["--max-steps-limit", "48", "--max-body-bytes", "1000", "--model-id", "m", "--shutdown-timeout", "0"]
    assert invoke("serve", *limits).exit_code == 0
    assert invoke("serve", "--backend", "torch:demo", "-o", "max_batch=16", "-o", 'device="cpu"').exit_code == 0
    assert calls == [
        ("torch:demo", "127.0.0.1", 8000, None, defaults),
        (None, "0.0.0.0", 9000, "k", defaults),
        (None, "127.0.0.1", 8000, "from-env", defaults),
        (
            None,
            "127.0.0.1",
            8000,
            None,
            {
                **defaults,
                "model_id": "m",
                "max_denoising_steps_limit": 48,
                "max_body_bytes": 1000,
                "timeout_graceful_shutdown": 0,
            },
        ),
        ("torch:demo", "127.0.0.1", 8000, None, {**defaults, "backend_options": {"max_batch": 16, "device": "cpu"}}),
    ]
    assert invoke("serve", "--port", "0").exit_code == 2
    assert invoke("serve", "--max-tokens-limit", "0").exit_code == 2


def test_serve_without_the_server_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # not installed
    error, hint = failure_lines(invoke("serve", "--backend", "nope:x"))
    assert error == "error: The server needs uvicorn, which this Python lacks."
    assert hint == "hint: install the server extra: pip install 'diffusiongemma-sdk[server]'"


# --- help ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "texts"),
    [
        ("chat", "--backend --max-tokens --thinking --steps --seed --system --no-live --debug /reset /exit Ctrl-D"),
        ("bench", "--backend --prompts --prompt --concurrency --max-tokens --steps --seed --json --debug first tokens"),
        ("models", "--backend --json --debug capabilities GET"),
        ("doctor", "--json --debug Required NVIDIA_API_KEY NVIDIA_BASE_URL llama.cpp CUDA"),
        ("serve", "--backend --host --port --api-key DIFFUSIONGEMMA_SERVER_API_KEY --debug [server]"),
    ],
)
def test_help(command: str, texts: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    for text in texts.split():
        assert text in result.stdout, text
    assert command in invoke("--help").stdout


def test_usage_errors_exit_2() -> None:
    assert invoke("bench", "--prompts", "many").exit_code == 2
    assert invoke("chat", "extra").exit_code == 2
    assert invoke("doctor", "--nope").exit_code == 2


@pytest.mark.usefixtures("offline")
def test_json_outputs_are_one_line(server: ScriptedServer) -> None:
    for args in (["models", "--backend", spec(server)], ["bench", "--backend", spec(server), "--prompts", "1"]):
        result = invoke(*args, "--json")
        assert result.stdout.count("\n") == 1
        json.loads(result.stdout)
    assert invoke("doctor", "--json").stdout.count("\n") == 1
