"""The same application code on a local engine and through an OpenAI-compatible server of it: only the spec changes.

    python examples/serve_and_switch.py

Starts `diffusiongemma serve`'s app for `torch:demo` on a free loopback port (in this process), then runs one
application function on `torch:demo` directly and on `openai:http://127.0.0.1:<port>/v1`, and with openai-python.
Needs `pip install 'diffusiongemma-sdk[server]' diffusiongemma-torch openai`.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from openai import AsyncOpenAI

from diffusiongemma_sdk import AsyncDiffusionGemma, DiffusionParams
from diffusiongemma_sdk.server import create_app


async def application(client: AsyncDiffusionGemma) -> str:
    """What an application writes once, whatever the backend: per-request diffusion settings and thinking included."""
    settings = DiffusionParams(max_denoising_steps=16)
    generation = await client.generate("Reverse these words: red green blue", thinking=True, diffusion=settings, seed=3)
    return f"{generation.text} (thought: {generation.reasoning})"


async def main() -> None:
    async with AsyncDiffusionGemma("torch:demo") as local:
        print(f"torch:demo            -> {await application(local)}")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(AsyncDiffusionGemma("torch:demo"), owns_client=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110  (uvicorn says it has started with a flag, not an event)
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        async with AsyncDiffusionGemma(f"openai:{base}") as remote:
            print(f"openai:{base} -> {await application(remote)}")
        async with AsyncOpenAI(base_url=base, api_key="unused") as openai:
            completion = await openai.chat.completions.create(
                model="torch:demo", messages=[{"role": "user", "content": "Sort these numbers: 17 4 9"}], seed=0
            )
        print(f"openai-python         -> {completion.choices[0].message.content}")
    finally:
        server.should_exit = True
        await serving
        sock.close()


if __name__ == "__main__":
    asyncio.run(main())
