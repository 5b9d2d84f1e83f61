"""A LangChain agent on DiffusionGemma: a tool call, its result, the answer, and the denoising drafts on the way.

    python examples/langchain_agent.py                                   # the bundled demo model, on this machine
    python examples/langchain_agent.py --backend openai:http://127.0.0.1:8000/v1   # a `diffusiongemma serve`
    python examples/langchain_agent.py --backend nim                     # hosted NIM (NVIDIA_API_KEY)

Needs `pip install langchain-diffusiongemma[agents] diffusiongemma-torch` (the torch engine for `torch:demo`).
The agent code is the same for every backend: moving from local to cloud is the `--backend` string.
"""

from __future__ import annotations

import argparse
import asyncio

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage

from langchain_diffusiongemma import DRAFT_EVENT, ChatDiffusionGemma


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def main(backend: str) -> None:
    model = ChatDiffusionGemma(backend, drafts=backend.startswith("torch:"))
    agent = create_agent(model, tools=[add])
    question = {"messages": [HumanMessage("What is 12 + 30?")]}
    async for event in agent.astream_events(question, version="v2"):
        if event["event"] == "on_custom_event" and event["name"] == DRAFT_EVENT:
            draft = event["data"]
            print(f"  draft, canvas {draft['canvas']} step {draft['step']}: {draft['draft_text']!r}")
        elif event["event"] == "on_tool_end":
            print(f"tool {event['name']} -> {event['data']['output'].content}")
        elif event["event"] == "on_chat_model_end":
            message = event["data"]["output"]
            calls = ", ".join(f"{c['name']}({c['args']})" for c in message.tool_calls)
            print(f"model: {message.text or calls}  {message.response_metadata.get('diffusion', {})}")
    model.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="torch:demo")
    asyncio.run(main(parser.parse_args().backend))
