"""Structured output: a validated pydantic instance (or a JSON value matching a schema dict) from any backend.

`response_model` is a pydantic model class, or a JSON schema as a dict (the answer is then the JSON value, checked by
`_jsonschema`). Backends that declare native structured output get the JSON schema in the request. All others
(hosted NIM and vLLM answer any constrained-decoding request on DiffusionGemma with a 400) get the schema in the
system prompt; the JSON is extracted from the answer (code fences and thought markup tolerated), validated, and
re-asked with the validation error until it passes or `max_validation_retries` is spent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

from pydantic import BaseModel, ValidationError

from diffusiongemma_sdk._backend import GenerationRequest
from diffusiongemma_sdk._errors import OutputValidationError, describe_validation_error
from diffusiongemma_sdk._gemma4 import parse_gemma4
from diffusiongemma_sdk._jsonschema import check_json
from diffusiongemma_sdk._types import Generation, Message, Usage

__all__ = ["ResponseModel", "extract_json", "generate_structured", "structured_request"]

ResponseModel: TypeAlias = type[BaseModel] | Mapping[str, Any]
"""What `response_model=` takes: a pydantic model class, or a JSON schema dict."""

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_INSTRUCTION = (
    "Answer with one JSON value that matches this JSON schema, and nothing else: no prose, no code fences.\n"
    "JSON schema:\n{schema}"
)
_REASK = "That answer is not valid: {error}\nReply again with only the corrected JSON value matching the schema."


def structured_request(request: GenerationRequest, response_model: ResponseModel, *, native: bool) -> GenerationRequest:
    """The request that asks for `response_model`: its JSON schema as `response_schema` where the backend constrains
    its output natively, else in the system prompt."""
    schema = _schema(response_model)
    if native:
        return request.model_copy(update={"response_schema": schema})
    return request.model_copy(update={"messages": _with_instruction(request.messages, schema)})


async def generate_structured(
    generate: Callable[[GenerationRequest], Awaitable[Generation]],
    request: GenerationRequest,
    response_model: ResponseModel,
    max_validation_retries: int,
) -> Generation:
    """Generate `request` (from `structured_request`) until the answer validates as `response_model`, re-asking
    with the validation error; the instance (or the JSON value) lands in `Generation.parsed`."""
    attempts: list[str] = []
    errors: list[str] = []
    usage = Usage()
    for _ in range(max_validation_retries + 1):
        generation = await generate(request)
        usage = usage + generation.usage
        attempts.append(generation.text)
        try:
            parsed = _validated(response_model, extract_json(generation.text))
        except (ValueError, ValidationError) as exc:
            errors.append(describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc))
            request = _reask(request, generation, errors[-1])
            continue
        return generation.model_copy(update={"parsed": parsed, "usage": usage})
    raise OutputValidationError(
        f"The answer did not match {_name(response_model)} after {len(attempts)} attempt(s); "
        f"last error: {errors[-1]}. Raise max_validation_retries or simplify the schema.",
        attempts=attempts,
        errors=errors,
        usage=usage,
    )


def extract_json(text: str) -> Any:
    """The first JSON object or array in an answer, ignoring thought markup, code fences and surrounding prose."""
    if "<|channel>" in text or "<think>" in text:
        text = parse_gemma4(text).text
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                return decoder.raw_decode(text, start)[0]
            except json.JSONDecodeError:
                continue
    raise ValueError("the answer holds no JSON object or array")


def _schema(response_model: ResponseModel) -> dict[str, Any]:
    return dict(response_model) if isinstance(response_model, Mapping) else response_model.model_json_schema()


def _validated(response_model: ResponseModel, value: Any) -> Any:
    if isinstance(response_model, Mapping):
        check_json(value, response_model)
        return value
    return response_model.model_validate(value)


def _name(response_model: ResponseModel) -> str:
    if isinstance(response_model, Mapping):
        return str(response_model.get("title") or "the schema")
    return response_model.__name__


def _with_instruction(messages: list[Message], schema: dict[str, Any]) -> list[Message]:
    instruction = _INSTRUCTION.format(schema=json.dumps(schema, separators=(",", ":")))
    if messages and messages[0].role == "system" and isinstance(messages[0].content, str):
        first = messages[0].model_copy(update={"content": f"{messages[0].content}\n\n{instruction}"})
        return [first, *messages[1:]]
    return [Message(role="system", content=instruction), *messages]


def _reask(request: GenerationRequest, generation: Generation, error: str) -> GenerationRequest:
    messages = [
        *request.messages,
        Message(role="assistant", content=generation.text),
        Message(role="user", content=_REASK.format(error=error)),
    ]
    update: dict[str, Any] = {"messages": messages}
    if generation.finish_reason == "length" and request.max_tokens is not None:
        update["max_tokens"] = request.max_tokens * 2  # cut off at a canvas boundary: give it room
    return request.model_copy(update=update)
