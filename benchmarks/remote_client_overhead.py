"""Client overhead: diffusiongemma-sdk's remote backend vs openai-python's AsyncOpenAI.

Both clients talk to the same fast local OpenAI-compatible server (a separate process answering instantly with a
canned DiffusionGemma-sized answer: one chunk per canvas when streaming). Each (client, mode, concurrency) runs in a
fresh process, so peak RSS is that client's own. Prints requests/s, client-side p50/p99 latency and peak RSS, and the
ratio ours/openai, all measured in this one run.

    .venv/bin/python benchmarks/remote_client_overhead.py [--requests-c1 400] [--requests-c64 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

ANSWER = " ".join(str(n) for n in range(200))  # about one 256-token canvas of text
USAGE = {"prompt_tokens": 24, "completion_tokens": 256, "total_tokens": 280}
MESSAGES = [{"role": "user", "content": "Sort these numbers: 17 4 9 23 1 88 5"}]


# ---------------------------------------------------------------- server (its own process)


def _response_bytes() -> tuple[bytes, bytes]:
    completion = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": USAGE,
        }
    ).encode()
    plain = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(completion)).encode()
        + b"\r\n\r\n"
        + completion
    )
    half = len(ANSWER) // 2

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": ANSWER[:half]}),
        chunk({"content": ANSWER[half:]}),
        chunk({}, "stop"),
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": USAGE,
        },
    ]
    body = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
    streamed = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    return plain, streamed


async def _serve(port: int) -> None:
    plain, streamed = _response_bytes()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                writer.write(streamed if b'"stream": true' in body or b'"stream":true' in body else plain)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- one client run (its own process)


async def _run_client(client_name: str, mode: str, concurrency: int, requests: int, port: int) -> dict[str, float]:
    base_url = f"http://127.0.0.1:{port}/v1"
    if client_name == "ours":
        from diffusiongemma_sdk import AsyncDiffusionGemma

        ours = AsyncDiffusionGemma(f"openai:{base_url}#m")

        async def one() -> str:
            if mode == "plain":
                return (await ours.generate(MESSAGES, max_tokens=256)).text
            async with ours.stream(MESSAGES, max_tokens=256) as stream:
                return (await stream.final()).text

        close = ours.aclose
    else:
        from openai import AsyncOpenAI

        theirs = AsyncOpenAI(base_url=base_url, api_key="unused")

        async def one() -> str:
            if mode == "plain":
                completion = await theirs.chat.completions.create(model="m", messages=MESSAGES, max_tokens=256)  # type: ignore[arg-type]
                return completion.choices[0].message.content or ""
            parts: list[str] = []
            stream = await theirs.chat.completions.create(
                model="m",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=256,
                stream=True,
                stream_options={"include_usage": True},
            )
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
            return "".join(parts)

        close = theirs.close

    latencies: list[float] = []
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            text = await one()
            latencies.append(time.perf_counter() - started)
            assert text == ANSWER, "wrong answer"

    warmup = iter(range(min(50, requests)))
    for _ in warmup:
        await one()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await close()
    latencies.sort()
    return {
        "rps": requests / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ---------------------------------------------------------------- orchestration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _measure(client: str, mode: str, concurrency: int, requests: int, port: int) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--client",
        client,
        "--mode",
        mode,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--port",
        str(port),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the benchmark server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=["ours", "openai"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["plain", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--requests-c1", type=int, default=400, help="requests per run at concurrency 1")
    parser.add_argument("--requests-c64", type=int, default=3000, help="requests per run at concurrency 64")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is reported")
    args = parser.parse_args()

    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    if args.client:
        print(json.dumps(asyncio.run(_run_client(args.client, args.mode, args.concurrency, args.requests, args.port))))
        return

    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        _wait_for(port)
        header = f"{'mode':<7}{'conc':>5}  {'client':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'RSS MB':>9}"
        print(header)
        print("-" * len(header))
        ratios = []
        for mode in ("plain", "stream"):
            for concurrency, requests in ((1, args.requests_c1), (64, args.requests_c64)):
                cells: dict[str, list[dict[str, float]]] = {"ours": [], "openai": []}
                for repeat in range(args.repeats):
                    order = ("ours", "openai") if repeat % 2 == 0 else ("openai", "ours")
                    for client in order:
                        cells[client].append(_measure(client, mode, concurrency, requests, port))
                medians = {
                    client: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                    for client, runs in cells.items()
                }
                for client, m in medians.items():
                    print(
                        f"{mode:<7}{concurrency:>5}  {client:<8}{m['rps']:>9.0f}{m['p50_ms']:>9.2f}"
                        f"{m['p99_ms']:>9.2f}{m['rss_mb']:>9.1f}"
                    )
                ratio = medians["ours"]["rps"] / medians["openai"]["rps"]
                rss = medians["ours"]["rss_mb"] / medians["openai"]["rss_mb"]
                ratios.append((mode, concurrency, ratio, rss))
        print()
        print(f"{'mode':<7}{'conc':>5}  {'throughput ours/openai':>24}{'peak RSS ours/openai':>22}")
        for mode, concurrency, ratio, rss in ratios:
            print(f"{mode:<7}{concurrency:>5}  {ratio:>23.2f}x{rss:>21.2f}x")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
