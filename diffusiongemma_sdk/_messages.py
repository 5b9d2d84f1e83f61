"""Turn what callers pass as a prompt (a string, `Message` objects, OpenAI-style dicts) into `Message` objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from pydantic import ValidationError

from diffusiongemma_sdk._errors import InvalidRequestError, describe_validation_error
from diffusiongemma_sdk._types import Generation, ImagePart, Message, TextPart, ToolCall
from diffusiongemma_sdk._wire.fields import tool_call_from_json

__all__ = ["MessageInput", "PromptInput", "normalize_messages"]

MessageInput: TypeAlias = Message | Generation | Mapping[str, Any]
PromptInput: TypeAlias = str | MessageInput | Sequence[MessageInput]


def normalize_messages(prompt: PromptInput) -> list[Message]:
    """Return the conversation as a list of `Message`, raising `InvalidRequestError` on malformed input."""
    if isinstance(prompt, str):
        return [Message(role="user", content=prompt)]
    items: Sequence[MessageInput] = [prompt] if isinstance(prompt, (Message, Generation, Mapping)) else prompt
    if not items:
        raise InvalidRequestError("The conversation is empty: pass a prompt string or at least one message.")
    return [_to_message(item, index) for index, item in enumerate(items)]


def _to_message(item: MessageInput, index: int) -> Message:
    if isinstance(item, Message):
        return item
    if isinstance(item, Generation):
        return item.to_message()
    if not isinstance(item, Mapping):
        raise InvalidRequestError(
            f"messages[{index}] is a {type(item).__name__}; pass a Message, a Generation or a dict "
            "with 'role' and 'content'."
        )
    try:
        return Message(
            role=item.get("role"),
            content=_content(item.get("content")),
            name=item.get("name"),
            tool_calls=[_tool_call(call) for call in item.get("tool_calls") or []],
            tool_call_id=item.get("tool_call_id"),
            reasoning=item.get("reasoning", item.get("reasoning_content")),
        )
    except (ValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidRequestError(f"messages[{index}] is not a valid message: {_describe(exc)}") from None


def _content(content: Any) -> str | list[TextPart | ImagePart]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[TextPart | ImagePart] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append(TextPart(text=part["text"]))
        elif kind == "image_url":
            image = part["image_url"]
            parts.append(ImagePart(url=image if isinstance(image, str) else image["url"]))
        elif kind == "image":
            parts.append(ImagePart(url=part["url"]))
        else:
            raise ValueError(f"unknown content part type {kind!r} (expected 'text', 'image_url' or 'image')")
    return parts


def _tool_call(call: Any) -> ToolCall:
    """A tool call in OpenAI form (`function.arguments` as JSON text or an object) or as `ToolCall.model_dump()`."""
    return call if isinstance(call, ToolCall) else tool_call_from_json(call)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    return str(exc)
