"""A real OpenAI-compatible HTTP server on loopback, scripted by tests.

It answers `/v1/chat/completions` and `/v1/models`. By default a chat request gets an echo of the last user message
(streamed as two chunks when asked to stream). Tests queue `Reply` objects to script what comes next: any status,
headers and body, SSE events with delays, stalls, connection resets before headers or mid-stream. Every request and
every connection the client closed early are recorded.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer. `events` makes it an SSE stream; each event is a dict (sent as JSON) or raw text."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Any] | None = None
    delay: float = 0.0  # seconds before the body, or before each SSE event
    reset_before_headers: bool = False
    reset_after_events: bool = False  # close the socket abruptly after the events, with no end of body
    stall: float = 0.0  # after the events, wait this long sending nothing


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class ScriptedServer:
    """Start with `with ScriptedServer() as server:`; `server.url` is the `/v1` base URL."""

    def __init__(self, model: str = "test-model") -> None:
        self.model = model
        self.replies: deque[Reply] = deque()
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.default_delay = 0.0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def wait_for_disconnect(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.disconnects:
                return True
            time.sleep(0.01)
        return False

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def default_reply(self, body: dict[str, Any]) -> Reply:
        last_user = next((m for m in reversed(body.get("messages", [])) if m.get("role") == "user"), {})
        content = last_user.get("content")
        text = f"echo: {content if isinstance(content, str) else json.dumps(content)}"
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        if not body.get("stream"):
            return Reply(body=completion(text, usage=usage, model=body.get("model")), delay=self.default_delay)
        half = len(text) // 2
        return Reply(
            events=[
                chunk(role="assistant", content=""),
                chunk(content=text[:half]),
                chunk(content=text[half:]),
                chunk(finish_reason="stop"),
                {"id": "chatcmpl-test", "object": "chat.completion.chunk", "choices": [], "usage": usage},
                "[DONE]",
            ]
        )


def completion(
    content: str | None,
    *,
    usage: dict[str, int] | None = None,
    model: str | None = "test-model",
    finish_reason: str = "stop",
    **message_fields: Any,
) -> dict[str, Any]:
    """A `chat.completion` body."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message_fields},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage or {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def chunk(*, finish_reason: str | None = None, **delta: Any) -> dict[str, Any]:
    """A `chat.completion.chunk` with one choice."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _make_handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._record(None)
            if self.path.endswith("/models"):
                self._send_json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
            else:
                self._send_json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            self._record(body)
            with server._lock:
                reply = server.replies.popleft() if server.replies else server.default_reply(body or {})
                server.active += 1
                server.max_active = max(server.max_active, server.active)
            try:
                self._answer(reply)
            finally:
                with server._lock:
                    server.active -= 1

        def _record(self, body: Any) -> None:
            server.requests.append(
                RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )

        def _answer(self, reply: Reply) -> None:
            if reply.reset_before_headers:
                self._reset()
                return
            if reply.events is None:
                if reply.delay and self._client_gone_within(reply.delay):
                    server.disconnects += 1
                    return
                payload = reply.body if isinstance(reply.body, (str, bytes)) else json.dumps(reply.body)
                data = payload.encode() if isinstance(payload, str) else payload
                headers = {"Content-Type": "application/json", **reply.headers}
                self._start(reply.status, headers, {"Content-Length": str(len(data))})
                self.wfile.write(data)
                return
            self._start(
                reply.status, {"Content-Type": "text/event-stream", **reply.headers}, {"Transfer-Encoding": "chunked"}
            )
            for event in reply.events:
                if reply.delay and self._client_gone_within(reply.delay):
                    server.disconnects += 1
                    return
                text = event if isinstance(event, str) and event.startswith((":", "data:", "event:")) else None
                if text is None:
                    text = f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n"
                if not self._write_chunk(text.encode()):
                    return
            if reply.stall and self._client_gone_within(reply.stall):
                server.disconnects += 1
                return
            if reply.reset_after_events:
                self._reset()
                return
            self._write_chunk(b"")

        def _start(self, status: int, headers: dict[str, str], framing: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in {**headers, **framing}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.flush()

        def _send_json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self._start(status, {"Content-Type": "application/json"}, {"Content-Length": str(len(data))})
            self.wfile.write(data)

        def _write_chunk(self, data: bytes) -> bool:
            try:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                server.disconnects += 1
                return False
            return True

        def _client_gone_within(self, seconds: float) -> bool:
            """Wait, watching the socket; True as soon as the client closes its end."""
            deadline = time.monotonic() + seconds
            while (remaining := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.02))
                if readable:
                    try:
                        if self.connection.recv(1, socket.MSG_PEEK) == b"":
                            return True
                    except ConnectionResetError:
                        return True
            return False

        def _reset(self) -> None:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

    return Handler
