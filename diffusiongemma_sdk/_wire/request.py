"""A `GenerationRequest` as the JSON body of `POST /chat/completions`."""

from __future__ import annotations

from typing import Any

from diffusiongemma_sdk._backend import GenerationRequest
from diffusiongemma_sdk._wire.fields import message_json, tool_json

__all__ = ["request_json", "wire_parameter"]

# Request fields (as `UnsupportedParameterError.parameter` names them) that the body carries under another name.
_WIRE_PARAMETERS = {
    "thinking": "chat_template_kwargs.enable_thinking",
    "images": "messages",
    "drafts": "diffusing",
    "response_schema": "response_format",
}


def wire_parameter(parameter: str) -> str:
    """Where a request field sits in a chat-completions body (`thinking` -> `chat_template_kwargs.enable_thinking`)."""
    return _WIRE_PARAMETERS.get(parameter, parameter)


def request_json(request: GenerationRequest, *, model: str, stream: bool) -> dict[str, Any]:
    """The body for a checked request. SDK-only options (timeout, retries) never enter it.

    The client's policy has already dropped what the server does not support, so whatever is left is sent:
    per-request diffusion settings as `diffusion`, a wish for denoise drafts as `diffusing` (streams only), a
    response schema as `response_format`.
    """
    body: dict[str, Any] = {"model": model, "messages": [message_json(m) for m in request.messages]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if request.drafts:
            body["diffusing"] = True
    if request.diffusion is not None and not request.diffusion.is_empty():
        body["diffusion"] = request.diffusion.model_dump(mode="json", exclude_none=True)
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": request.thinking}
    if request.tools:
        body["tools"] = [tool_json(tool) for tool in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice_json(request.tool_choice)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = request.stop
    if request.response_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": request.response_schema},
        }
    return body


def _tool_choice_json(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}
