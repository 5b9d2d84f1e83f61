"""Prompts rendered with the checkpoint's own chat template, and token ids to text and back."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from diffusiongemma_sdk import ConfigurationError, Message, Tool

__all__ = ["ChatFormat"]


class ChatFormat:
    """The checkpoint's tokenizer (`tokenizer.json`) and chat template (`chat_template.jinja`)."""

    def __init__(self, directory: Path) -> None:
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.exists():
            raise ConfigurationError(
                f"{directory} has no tokenizer.json; the torch backend needs the checkpoint's tokenizer."
            )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        settings = _read_json(directory / "tokenizer_config.json")
        template_file = directory / "chat_template.jinja"
        template = template_file.read_text() if template_file.exists() else settings.get("chat_template")
        if not isinstance(template, str):
            raise ConfigurationError(
                f"{directory} has no chat_template.jinja (nor a chat_template in tokenizer_config.json)."
            )
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = environment.from_string(template)
        self._special = {
            key: _token_text(settings.get(key))
            for key in ("bos_token", "eos_token", "pad_token", "unk_token")
            if settings.get(key) is not None
        }
        self._special.setdefault("bos_token", "<bos>")

    def render(self, messages: list[Message], *, tools: list[Tool], thinking: bool | None) -> str:
        """The prompt text, ending with the model's turn opener."""
        names = {call.id: call.name for message in messages for call in message.tool_calls}
        return self._template.render(
            messages=[_template_message(message, names) for message in messages],
            tools=[{"type": "function", "function": tool.model_dump(mode="json")} for tool in tools] or None,
            add_generation_prompt=True,
            enable_thinking=bool(thinking),
            **self._special,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text (the template writes the special tokens itself)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_id(self, text: str) -> int | None:
        found = self.tokenizer.token_to_id(text)
        return None if found is None else int(found)


def _template_message(message: Message, tool_names: dict[str, str]) -> dict[str, Any]:
    rendered: dict[str, Any] = {"role": message.role, "content": message.text}
    if message.tool_calls:
        rendered["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
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
    raise ConfigurationError(f"The chat template refused the conversation: {message}")
