"""The `diffusiongemma` program, run in-process with typer's CliRunner against real backends, and once as a process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from diffusiongemma_sdk import Generation, Usage
from diffusiongemma_sdk._cli import app
from diffusiongemma_sdk._cli.failures import describe, reporting_failures
from diffusiongemma_sdk._cli.report import stats_line
from tests.support.cli import STATS, TERMINAL, failure_lines
from tests.support.openai_server import Reply, ScriptedServer, completion

PROMPT = "Sort these numbers: 3 1 2"
DRAFT = re.compile(r"canvas 1 \| step \d+")


def run(*args: str, env: Mapping[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["generate", *args], env=env, input=stdin)


# --- a tiny torch checkpoint -------------------------------------------------------------------------------------


def test_json_is_one_generation_with_diffusion_usage(tiny_backend: str) -> None:
    result = run("--backend", tiny_backend, "--json", "--max-tokens", "16", "--seed", "1", PROMPT)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    generation = Generation.model_validate_json(result.stdout)
    assert generation.backend == tiny_backend
    assert generation.usage.canvases == 1
    assert generation.usage.completion_tokens <= 16


def test_same_seed_same_text(tiny_backend: str) -> None:
    first, again = (
        run("--backend", tiny_backend, "--json", "--max-tokens", "32", "--seed", "7", PROMPT) for _ in range(2)
    )
    assert Generation.model_validate_json(first.stdout).text == Generation.model_validate_json(again.stdout).text


@pytest.mark.parametrize("flags", [["--no-live"], []], ids=["no-live", "not-a-terminal"])
def test_plain_output_is_the_answer_then_stats_on_stderr(tiny_backend: str, flags: list[str]) -> None:
    args = ["--backend", tiny_backend, "--max-tokens", "32", "--seed", "3", "--steps", "2", PROMPT]
    expected = Generation.model_validate_json(run(*args, "--json").stdout)
    result = run(*args, *flags)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected.text + "\n"
    assert STATS.search(result.stderr), result.stderr
    assert f"{expected.usage.denoising_steps} denoising steps" in result.stderr
    assert f"(2.0 per canvas), {expected.usage.completion_tokens} tokens" in result.stderr
    assert not DRAFT.search(result.output)


def test_live_view_draws_the_canvases_on_a_terminal(tiny_backend: str) -> None:
    result = run("--backend", tiny_backend, "--max-tokens", "32", "--seed", "3", PROMPT, env=TERMINAL)
    assert result.exit_code == 0, result.output
    assert DRAFT.search(result.stdout), result.stdout
    assert "accepted" in result.stdout
    expected = Generation.model_validate_json(
        run("--backend", tiny_backend, "--max-tokens", "32", "--seed", "3", "--json", PROMPT).stdout
    )
    assert result.stdout.endswith(expected.text + "\n")  # the view is cleared, then the answer printed
    assert "denoising steps" in result.stderr


# --- the scripted OpenAI-compatible server ------------------------------------------------------------------------


def test_openai_backend_json(server: ScriptedServer) -> None:
    result = run("--backend", f"openai:{server.url}#test-model", "--json", "hello there")
    assert result.exit_code == 0, result.output
    generation = Generation.model_validate_json(result.stdout)
    assert (generation.text, generation.usage.completion_tokens) == ("echo: hello there", 3)


def test_prompt_from_stdin_system_message_and_thinking_reach_the_server(server: ScriptedServer) -> None:
    server.queue(Reply(body=completion("4", reasoning_content="two plus two")))
    args = ["--backend", f"openai:{server.url}#test-model", "--system", "Be brief.", "--thinking", "--no-live", "-"]
    result = run(*args, stdin="What is 2 + 2 ?\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "4\n"
    assert result.stderr.splitlines()[0] == "two plus two"
    assert re.fullmatch(r"2 tokens, [\d.]+ s, [\d.]+ tokens/s", result.stderr.splitlines()[1])
    body = server.chat_requests()[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2 ?"},
    ]
    assert body["chat_template_kwargs"] == {"enable_thinking": True}


def test_live_view_of_a_remote_stream_shows_the_text(server: ScriptedServer) -> None:
    result = run("--backend", f"openai:{server.url}#test-model", "hello", env=TERMINAL)
    assert result.exit_code == 0, result.output
    assert server.chat_requests()[-1].body["stream"] is True
    assert result.stdout.endswith("echo: hello\n")
    assert "3 tokens" in result.stderr


# --- failures ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "nope:x"], "Unknown backend scheme 'nope'."),
        (["--backend", "torch:/no/such/checkpoint"], "/no/such/checkpoint"),
        (["--backend", "nope:x", "--steps", "0"], "--steps must be 1 or more, not 0."),
        (["--backend", "openai:http://127.0.0.1:9/v1#m", "--steps", "4"], "does not support --steps"),
        ([], "No backend chosen."),
    ],
    ids=["unknown-scheme", "missing-checkpoint", "steps-0", "unsupported-steps", "no-backend"],
)
def test_errors_are_one_line_and_a_hint(args: Sequence[str], message: str) -> None:
    error, hint = failure_lines(run(*args, PROMPT))
    assert message in error
    assert len(hint) > len("hint: ")


def test_empty_prompt_on_stdin() -> None:
    error, _ = failure_lines(run("--backend", "nope:x", "-", stdin="\n"))
    assert error == "error: The prompt is empty. Nothing came on stdin."


def test_debug_shows_the_traceback() -> None:
    result = run("--backend", "nope:x", "--debug", PROMPT)
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-2].startswith("error: Unknown backend scheme")


def test_api_key_never_shown(server: ScriptedServer) -> None:
    secret = "sk-do-not-print-me"
    server.queue(*[Reply(status=401, body={"error": {"message": "invalid key"}})] * 2)
    result = run(
        "--backend", f"openai:{server.url}#test-model", "--json", PROMPT, env={"DIFFUSIONGEMMA_API_KEY": secret}
    )
    error, hint = failure_lines(result)
    assert "401" in error
    assert "DIFFUSIONGEMMA_API_KEY" in hint
    assert server.chat_requests()[-1].headers["authorization"] == f"Bearer {secret}"
    debug = run(
        "--backend", f"openai:{server.url}#test-model", "--debug", PROMPT, env={"DIFFUSIONGEMMA_API_KEY": secret}
    )
    assert "Traceback" in debug.stderr
    assert secret not in result.output + debug.output


def test_usage_errors_exit_2() -> None:
    assert run("--max-tokens", "many", PROMPT).exit_code == 2
    assert run().exit_code == 2


def test_unexpected_errors_are_reported_as_bugs() -> None:
    assert describe(RuntimeError("boom")) == (
        "Unexpected RuntimeError: boom",
        "this looks like a bug: rerun with --debug and report it",
    )


def test_keyboard_interrupt_exits_130_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as stopped, reporting_failures(debug=False):
        raise KeyboardInterrupt
    assert stopped.value.exit_code == 130
    assert capsys.readouterr() == ("", "")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_while_denoising_stops_the_engine_and_exits_130(tiny_backend: str) -> None:
    command = [
        sys.executable,
        "-m",
        "diffusiongemma_sdk._cli",
        "generate",
        "--backend",
        tiny_backend,
        "--max-tokens",
        "3000",
    ]
    with subprocess.Popen(
        [*command, "--seed", "2", "hi"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **TERMINAL},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell may have ignored it
    ) as process:
        assert process.stdout is not None
        while not DRAFT.search(process.stdout.readline()):  # the engine is denoising
            assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert (process.returncode, stderr) == (130, "")


def test_stats_line_leaves_out_what_the_backend_does_not_report() -> None:
    usage = Usage(completion_tokens=32, canvases=2, denoising_steps=14, wall_s=2.0)
    assert stats_line(usage, 9.0) == "2 canvases, 14 denoising steps (7.0 per canvas), 32 tokens, 2.00 s, 16.0 tokens/s"
    assert (
        stats_line(Usage(canvases=1, denoising_steps=1), 0.5) == "1 canvas, 1 denoising step (1.0 per canvas), 0.50 s"
    )
    assert stats_line(Usage(), 1.5) == "1.50 s"


# --- help and the installed program ------------------------------------------------------------------------------


def test_help() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    assert "generate" in top.stdout
    assert "Exit codes" in top.stdout
    command = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "160"})
    assert command.exit_code == 0
    flags = "--backend --max-tokens --thinking --no-thinking --steps --seed --system --json --no-live --debug"
    for text in ["PROMPT", "stdin", "stderr", "DIFFUSIONGEMMA_BACKEND", *flags.split()]:
        assert text in command.stdout, text


def test_installed_program() -> None:
    script = Path(sys.executable).with_name("diffusiongemma")
    assert script.exists(), "the console script is missing: reinstall the package (make install)"
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0
    assert "generate" in shown.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "diffusiongemma_sdk._cli", "generate", "--backend", "nope:x", PROMPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert [line.split(" ")[0] for line in failed.stderr.splitlines()] == ["error:", "hint:"]
