"""Real servers on free loopback ports: `serving(spec)` runs uvicorn in a thread with `run_server`'s settings and
gives tests the served client; `serve_command(spec)` runs the `diffusiongemma serve` program itself."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from diffusiongemma_sdk import AsyncDiffusionGemma, Backend
from diffusiongemma_sdk.server import create_app
from diffusiongemma_sdk.server._run import server_config

__all__ = ["ADD_TOOL", "Running", "ServeCommand", "free_port", "serve_command", "serving"]

ADD_TOOL: Any = {  # the demo task's `add`, as an OpenAI client declares it
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@dataclass
class Running:
    """A server started by `serving`; `client` is the SDK client it serves (built in the server's thread)."""

    server: uvicorn.Server
    client: AsyncDiffusionGemma
    thread: threading.Thread
    port: int
    model: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.url}/v1"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not shut down"


@contextmanager
def serving(
    spec: str | Backend,
    *,
    client_options: dict[str, Any] | None = None,
    graceful: int = 5,
    **app_options: Any,
) -> Iterator[Running]:
    """uvicorn with `run_server`'s settings, serving `spec` (or a backend) on a free loopback port, in a thread."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets (else Nagle adds ~40 ms per response)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    started: dict[str, Any] = {}
    failures: list[BaseException] = []

    async def serve() -> None:
        client = AsyncDiffusionGemma(spec, **(client_options or {}))
        app = create_app(client, owns_client=True, **app_options)
        config = server_config(app, port=port, timeout_graceful_shutdown=graceful, log_level="warning")
        started.update(server=uvicorn.Server(config), client=client)
        await started["server"].serve(sockets=[sock])

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=main, name=f"server {spec!r}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (started.get("server") and started["server"].started):
        assert not failures, failures
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    client: AsyncDiffusionGemma = started["client"]
    running = Running(started["server"], client, thread, port, app_options.get("model_id") or client.backend.name)
    try:
        yield running
    finally:
        if thread.is_alive():
            running.stop()
        sock.close()
    assert not failures, failures


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServeCommand:
    """A `diffusiongemma serve` process started by `serve_command`; its output goes to `log`."""

    process: subprocess.Popen[bytes]
    port: int
    model: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.url}/v1"


@contextmanager
def serve_command(spec: str, *, startup_timeout: float = 50, options: Sequence[str] = ()) -> Iterator[ServeCommand]:
    """`python -m diffusiongemma_sdk._cli serve --backend SPEC --port N [OPTIONS]`, until `/health` answers; Ctrl-C at
    the end."""
    port = free_port()
    command = [sys.executable, "-m", "diffusiongemma_sdk._cli", "serve", "--backend", spec, "--port", str(port)]
    command += options
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "serve.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            model = _wait_for_health(process, port, log, startup_timeout)
            yield ServeCommand(process, port, model, log)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # what Ctrl-C sends: a graceful shutdown
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_for_health(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            if health.status_code == 200:
                return str(health.json()["model"])
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"serve did not start:\n{log.read_text()}"
        time.sleep(0.1)
