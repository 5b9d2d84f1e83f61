"""Tool definitions, built by hand, from typed Python functions, or from pydantic models."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

__all__ = ["Tool", "as_tool"]

_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_ARG_SECTIONS = ("args", "arguments", "parameters")
_SECTION_HEADER = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


class Tool(BaseModel):
    """A function the model may call: a name, a description and a JSON schema of its parameters."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"tool name {name!r} must be 1-64 characters of letters, digits and '_' "
                "(Gemma's tool-call format cannot carry other characters)"
            )
        return name

    @classmethod
    def from_function(cls, function: Callable[..., Any], *, name: str | None = None) -> Tool:
        """Build a tool from a typed function: the schema from its signature, descriptions from its docstring.

        Google-style `Args:` sections in the docstring describe the parameters.
        """
        summary, arg_docs = _parse_docstring(inspect.getdoc(function) or "")
        hints = get_type_hints(function, include_extras=True)
        fields: dict[str, Any] = {}
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if parameter.name not in hints:
                raise TypeError(
                    f"parameter {parameter.name!r} of {function.__name__!r} has no type hint; "
                    "annotate it so the model knows what to send"
                )
            default = ... if parameter.default is parameter.empty else parameter.default
            fields[parameter.name] = (
                hints[parameter.name],
                Field(default, description=arg_docs.get(parameter.name)),
            )
        model = create_model(f"{function.__name__}_arguments", **fields)
        return cls(
            name=name or function.__name__,
            description=summary,
            parameters=_clean_schema(model.model_json_schema()),
        )

    @classmethod
    def from_model(cls, model: type[BaseModel], *, name: str | None = None, description: str | None = None) -> Tool:
        """Build a tool whose arguments are the fields of a pydantic model."""
        schema = model.model_json_schema()
        return cls(
            name=name or model.__name__,
            description=description if description is not None else schema.get("description", ""),
            parameters=_clean_schema(schema),
        )


def as_tool(tool: Tool | Callable[..., Any] | type[BaseModel]) -> Tool:
    """Accept a `Tool`, a typed function or a pydantic model class and return a `Tool`."""
    if isinstance(tool, Tool):
        return tool
    if isinstance(tool, type) and issubclass(tool, BaseModel):
        return Tool.from_model(tool)
    if callable(tool):
        return Tool.from_function(tool)
    raise TypeError(f"expected a Tool, a typed function or a pydantic model class, got {type(tool).__name__}")


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated titles, which only add noise to the prompt."""
    cleaned = {key: value for key, value in schema.items() if key not in ("title", "description")}
    if "properties" in cleaned:
        cleaned["properties"] = {
            key: {k: v for k, v in value.items() if k != "title"} for key, value in cleaned["properties"].items()
        }
    cleaned.setdefault("properties", {})
    return cleaned


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a docstring into its summary (the text before the first section) and its `Args:` descriptions."""
    summary: list[str] = []
    arg_docs: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in doc.splitlines():
        if _SECTION_HEADER.match(line):
            section, current = line.strip()[:-1].strip().lower(), None
        elif section is None:
            summary.append(line)
        elif section in _ARG_SECTIONS:
            match = _ARG_LINE.match(line)
            if match:
                current = match.group(1).lstrip("*")
                arg_docs[current] = match.group(3).strip()
            elif current and line.strip():
                arg_docs[current] = f"{arg_docs[current]} {line.strip()}".strip()
    return " ".join(" ".join(summary).split()), arg_docs
