"""Testing an application with the `test` backend: scripted replies, a retried rate limit, and what was sent.

    python examples/testing_your_app.py

No model, no server: `diffusiongemma_sdk.testing.TestBackend` runs the whole client path (the request contract,
retries, the deadline, streams). In a test suite, the same lines go in a test function.
"""

from __future__ import annotations

import asyncio

from diffusiongemma_sdk import AsyncDiffusionGemma, Generation, RateLimitError, ToolCall
from diffusiongemma_sdk.testing import TestBackend


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def answer_sum(client: AsyncDiffusionGemma, question: str) -> str:
    """The application under test: ask, run the tool the model calls, return the model's answer."""
    first = await client.generate(question, tools=[add], tool_choice="required")
    results = [{"role": "tool", "tool_call_id": c.id, "content": str(add(**c.arguments))} for c in first.tool_calls]
    answer = await client.generate([{"role": "user", "content": question}, first, *results], tools=[add])
    return answer.text


async def main() -> None:
    backend = TestBackend(
        [
            RateLimitError("slow down", status_code=429, retry_after=0),  # retried by the client
            Generation(tool_calls=[ToolCall(name="add", arguments={"a": 12, "b": 30})]),
            "The sum is 42.",
        ]
    )
    async with AsyncDiffusionGemma(backend) as client:
        answer = await answer_sum(client, "What is 12 + 30?")
    assert answer == "The sum is 42.", answer
    assert [request.tool_choice for request in backend.requests] == ["required", "required", None]
    assert backend.requests[-1].messages[-1].content == "42"  # the tool result the application sent back
    print(f"answer: {answer}")
    print(f"the backend received {len(backend.requests)} requests (one retried after a 429)")


if __name__ == "__main__":
    asyncio.run(main())
