"""Prompts rendered with the checkpoint's own chat template, and token ids to text and back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from diffusiongemma_sdk import ConfigurationError, InvalidRequestError, Message, Tool
from diffusiongemma_sdk._gemma4 import TOOL_CALL_OPEN
from diffusiongemma_sdk._wire.fields import tool_call_json, tool_json

__all__ = ["ChatFormat", "ChatTemplate", "ForcedCall", "forced_call"]


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
    """The checkpoint's chat template (`chat_template.jinja`, else `tokenizer_config.json`'s), rendered sandboxed."""

    def __init__(self, directory: Path) -> None:
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
                **self._special,
            )
        except InvalidRequestError:
            raise
        except (TemplateError, RecursionError, TypeError, ValueError, LookupError) as exc:
            raise InvalidRequestError(f"The chat template cannot render this conversation: {exc}") from None


class ChatFormat(ChatTemplate):
    """The checkpoint's chat template plus its tokenizer (`tokenizer.json`)."""

    def __init__(self, directory: Path) -> None:
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.exists():
            raise ConfigurationError(
                f"{directory} has no tokenizer.json; the torch backend needs the checkpoint's tokenizer."
            )
        super().__init__(directory)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text (the template writes the special tokens itself)."""
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        except TypeError:  # tokenizers takes only text that UTF-8 can encode
            raise InvalidRequestError(
                "The prompt is not valid Unicode text: it has an unpaired surrogate (a lone \\ud800-\\udfff)."
            ) from None

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_id(self, text: str) -> int | None:
        found = self.tokenizer.token_to_id(text)
        return None if found is None else int(found)


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
