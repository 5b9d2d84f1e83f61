"""Prompts rendered with a checkpoint's own chat template (sandboxed jinja2), and the tool call a `tool_choice`
forces, in Gemma 4's markup."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from diffusiongemma_sdk._errors import ConfigurationError, InvalidRequestError
from diffusiongemma_sdk._gemma4 import TOOL_CALL_OPEN
from diffusiongemma_sdk._tools import Tool
from diffusiongemma_sdk._types import Message
from diffusiongemma_sdk._wire.fields import tool_call_json, tool_json

__all__ = ["TEMPLATE_TOKENS", "ChatTemplate", "ForcedCall", "forced_call", "read_template"]

TEMPLATE_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")
"""The special tokens a chat template may print by name."""


@dataclass(frozen=True)
class ForcedCall:
    """A tool call the answer must be: the prompt ends with `opening`, which the model continues, and the call
    names one of `names` (the first when the model writes none that can be read)."""

    opening: str
    names: tuple[str, ...]


def forced_call(tool_choice: str | None, tools: list[Tool]) -> ForcedCall | None:
    """The call that `tool_choice` "required" or a tool's name forces, in Gemma 4's markup; None for the others."""
    if tool_choice in (None, "auto", "none"):
        return None
    names = tuple(tool.name for tool in tools) if tool_choice == "required" else (str(tool_choice),)
    opening = f"{TOOL_CALL_OPEN}call:" + (names[0] if len(names) == 1 else "")
    return ForcedCall(opening=opening, names=names)


class ChatTemplate:
    """A chat template, rendered in a sandboxed jinja2 environment; `special_tokens` are the texts of the tokens
    it may print by name (`bos_token`, ...)."""

    def __init__(self, template: str, special_tokens: Mapping[str, str]) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = environment.from_string(template)
        self.special_tokens = {"bos_token": "<bos>", **special_tokens}

    @classmethod
    def from_directory(cls, directory: Path) -> ChatTemplate:
        """A checkpoint folder's template: `chat_template.jinja`, else `tokenizer_config.json`'s."""
        source, special = read_template(directory)
        return cls(source, special)

    def render(self, messages: list[Message], *, tools: list[Tool], thinking: bool | None) -> str:
        """The prompt text, ending with the model's turn opener (or after a tool result, where the model goes on).

        Raises `InvalidRequestError` when the template refuses the conversation or fails on it (a schema nested too
        deeply for its macros, a value it cannot print): the template is fixed, so the request is what to change.
        """
        names = {call.id: call.name for message in messages for call in message.tool_calls}
        try:
            return self._template.render(
                messages=[_template_message(message, names) for message in messages],
                tools=[tool_json(tool) for tool in tools] or None,
                add_generation_prompt=True,
                enable_thinking=bool(thinking),
                **self.special_tokens,
            )
        except InvalidRequestError:
            raise
        except (TemplateError, RecursionError, TypeError, ValueError, LookupError) as exc:
            raise InvalidRequestError(f"The chat template cannot render this conversation: {exc}") from None


def read_template(directory: Path) -> tuple[str, dict[str, str]]:
    """A checkpoint folder's chat template source and the texts of its named special tokens."""
    settings = _read_json(directory / "tokenizer_config.json")
    template_file = directory / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else settings.get("chat_template")
    if not isinstance(template, str):
        raise ConfigurationError(
            f"{directory} has no chat_template.jinja (nor a chat_template in tokenizer_config.json)."
        )
    special = {key: _token_text(settings[key]) for key in TEMPLATE_TOKENS if settings.get(key) is not None}
    return template, special


def _template_message(message: Message, tool_names: dict[str, str]) -> dict[str, Any]:
    rendered: dict[str, Any] = {"role": message.role, "content": message.text}
    if message.tool_calls:
        rendered["tool_calls"] = [tool_call_json(call, arguments="object") for call in message.tool_calls]
    if message.role == "tool":
        rendered["tool_call_id"] = message.tool_call_id
        rendered["name"] = message.name or tool_names.get(message.tool_call_id or "", "")
    return rendered


def _read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _token_text(value: Any) -> str:
    return str(value.get("content", "")) if isinstance(value, dict) else str(value)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=False)


def _raise(message: str) -> None:
    raise InvalidRequestError(f"The chat template refused the conversation: {message}")
