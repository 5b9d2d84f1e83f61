"""A scripted stand-in for a capable model, for tests that need one (LangChain's standard integration tests).

`capable_reply` answers a `GenerationRequest` by rules, as a `TestBackend` function: served by the real `serve` app
it makes a scripted OpenAI-compatible server. It calls a tool when tools are offered (arguments from the last user
message: its integers for integer parameters, its quoted text for strings), answers tool results with their content,
writes JSON matching a schema asked for in the prompt, and otherwise says hello.
"""

from __future__ import annotations

import json
import re
from typing import Any

from diffusiongemma_sdk import Generation, GenerationRequest, Message, ToolCall
from diffusiongemma_sdk.testing import example_value

__all__ = ["capable_reply"]

_SCHEMA_IN_PROMPT = re.compile(r"JSON schema:\n(\{.*\})", re.DOTALL)
_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")


def capable_reply(request: GenerationRequest) -> Generation:
    messages = request.messages
    last_user = next((m.text for m in reversed(messages) if m.role == "user"), "")
    if messages[-1].role == "tool":
        results = [m.text for m in messages if m.role == "tool"]
        return Generation(text=f"The tool said: {results[-1]}.")
    if request.tools and request.tool_choice != "none":
        tool = next((t for t in request.tools if t.name == request.tool_choice), request.tools[0])
        return Generation(tool_calls=[ToolCall(name=tool.name, arguments=_arguments(tool.parameters, last_user))])
    schema = request.response_schema or _schema_in_prompt(messages)
    if schema is not None:
        return Generation(text=json.dumps(_filled(example_value(schema), last_user)))
    return Generation(text=f"Hello! You said: {last_user}" if last_user else "Hello!")


def _schema_in_prompt(messages: list[Message]) -> dict[str, Any] | None:
    for message in messages:
        if message.role == "system" and (found := _SCHEMA_IN_PROMPT.search(message.text)):
            schema: dict[str, Any] = json.loads(found.group(1))
            return schema
    return None


def _arguments(schema: dict[str, Any], text: str) -> dict[str, Any]:
    numbers = [int(n) for n in re.findall(r"-?\d+", text)]
    quoted = [a or b for a, b in _QUOTED.findall(text)]
    arguments: dict[str, Any] = {}
    for name, field in schema.get("properties", {}).items():
        kind = field.get("type")
        if kind == "integer" and numbers:
            arguments[name] = numbers.pop(0)
        elif kind == "string" and quoted:
            arguments[name] = quoted.pop(0)
        else:
            arguments[name] = example_value(field, schema.get("$defs"))
    return arguments


def _filled(value: Any, text: str) -> Any:
    """Example strings replaced by words, so that answers read like text."""
    if isinstance(value, dict):
        return {key: _filled(item, text) if item != "a" else f"{key} about {text[:30]}" for key, item in value.items()}
    if isinstance(value, list):
        return [_filled(item, text) for item in value]
    return value
