"""Generate, stream with drafts and thinking, and the blocking client, on the bundled demo model.

    python examples/quickstart.py [--backend torch:demo]

Needs `pip install diffusiongemma-sdk diffusiongemma-torch`. Any backend spec works (`nim` with NVIDIA_API_KEY,
`openai:http://host:8000/v1`); drafts are asked for only where the backend has them.
"""

from __future__ import annotations

import argparse
import asyncio

from diffusiongemma_sdk import AsyncDiffusionGemma, DiffusionGemma


async def main(backend: str) -> None:
    async with AsyncDiffusionGemma(backend) as client:
        generation = await client.generate("Sort these numbers: 17 4 9", seed=0)
        print(f"answer: {generation.text}")
        print(
            f"usage: {generation.usage.completion_tokens} tokens, {generation.usage.canvases} canvas(es), "
            f"{generation.usage.denoising_steps} denoising steps"
        )

        drafts = (await client.discover_capabilities()).denoise_stream
        async with client.stream("Reverse these words: red green blue", thinking=True, drafts=drafts) as stream:
            async for event in stream:
                if event.type == "denoise_step":
                    print(f"  step {event.step}: {event.draft_text!r}")
                elif event.type == "canvas":
                    print(f"committed: {event.text_delta!r}")
            final = await stream.final()
        print(f"reasoning: {final.reasoning}")


def blocking(backend: str) -> None:
    with DiffusionGemma(backend) as client:
        print(f"blocking client: {client.generate('Reverse these words: sun moon star', seed=0).text}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="torch:demo")
    spec = parser.parse_args().backend
    asyncio.run(main(spec))
    blocking(spec)
