"""Tools as LangChain binds them, in the SDK's terms: declarations, `tool_choice` in every form LangChain and
ChatOpenAI accept, and `strict` argument checks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.utils.function_calling import convert_to_openai_tool

from diffusiongemma_sdk import Generation, Tool, ToolCall
from diffusiongemma_sdk._jsonschema import SchemaMismatch, check_json

__all__ = ["ToolChoiceInput", "openai_tools", "sdk_tool_choice", "sdk_tools", "with_strict_arguments"]

ToolChoiceInput = str | bool | Mapping[str, Any] | None


def openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain tools, functions, pydantic models or dicts as OpenAI tool declarations (what a binding carries)."""
    return [convert_to_openai_tool(tool) for tool in tools]


def sdk_tools(declarations: Sequence[Mapping[str, Any]]) -> list[Tool]:
    """OpenAI tool declarations as the SDK's `Tool`s."""
    tools = []
    for declaration in declarations:
        function = declaration.get("function", declaration)
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        tools.append(Tool(name=function["name"], description=function.get("description", ""), parameters=parameters))
    return tools


def sdk_tool_choice(choice: ToolChoiceInput, names: Sequence[str]) -> str | None:
    """`tool_choice` as the SDK takes it: "auto", "none", "required" or a tool's name.

    LangChain's `"any"` and `True` mean "required"; `False` and None leave the choice to the model; a dict is
    OpenAI's `{"type": "function", "function": {"name": ...}}` (or `{"type": "tool", "name": ...}`). A name must be
    one of the bound tools.
    """
    if choice is None or choice is False:
        return None
    if choice is True or choice == "any":
        return "required"
    if isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if not isinstance(name, str):
            raise ValueError(f"tool_choice {dict(choice)!r} names no tool; use {{'type': 'function', 'function': ...}}")
        choice = name
    if choice in ("auto", "none", "required"):
        return str(choice)
    if choice not in names:
        raise ValueError(f"tool_choice {choice!r} is not one of the bound tools ({', '.join(names) or 'none'})")
    return str(choice)


def with_strict_arguments(generation: Generation, tools: Sequence[Tool]) -> tuple[Generation, dict[str, str]]:
    """`strict=True`: calls whose arguments do not match their tool's schema become invalid calls (the arguments
    kept as written); returns the generation and each invalid call's error by call id."""
    schemas = {tool.name: tool.parameters for tool in tools}
    checked: list[ToolCall] = []
    errors: dict[str, str] = {}
    for call in generation.tool_calls:
        try:
            if call.raw_arguments is None and call.name in schemas:
                check_json(call.arguments, schemas[call.name])
        except SchemaMismatch as exc:
            errors[call.id] = f"The arguments do not match {call.name}'s schema: {exc}"
            call = call.model_copy(update={"raw_arguments": json.dumps(call.arguments)})
        checked.append(call)
    return generation.model_copy(update={"tool_calls": checked}), errors
