"""A tool round trip: the model calls `add`, the application runs it, the model answers with the result.

    python examples/tool_round_trip.py [--backend torch:demo]

The bundled demo model knows exactly this tool; on a real deployment, any typed Python function is a tool (its
schema comes from the signature, its descriptions from the docstring).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from diffusiongemma_sdk import AsyncDiffusionGemma


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


async def main(backend: str) -> None:
    async with AsyncDiffusionGemma(backend) as client:
        messages: list[Any] = [{"role": "user", "content": "What is 12 + 30?"}]
        first = await client.generate(messages, tools=[add], tool_choice="required", seed=0)
        for call in first.tool_calls:
            print(f"call: {call.name}({call.arguments})")
        messages += [first.to_message()] + [
            {"role": "tool", "tool_call_id": call.id, "content": str(add(**call.arguments))}
            for call in first.tool_calls
        ]
        answer = await client.generate(messages, tools=[add], seed=0)
        print(f"answer: {answer.text}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="torch:demo")
    asyncio.run(main(parser.parse_args().backend))
