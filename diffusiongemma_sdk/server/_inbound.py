"""Chat-completions request bodies in, `GenerationRequest`s out; every client mistake becomes a 400 `ServerError`.

The body is read strictly: JSON types must match (no "5" for 5), unknown fields are refused, and OpenAI parameters
this server cannot honour are refused unless their value asks for nothing (`n: 1`, `logprobs: false`). The one
exception is `temperature` and `top_p`: OpenAI clients send them by habit (LangChain's `ChatOpenAI(temperature=0)`),
so they are checked and then ignored, because the diffusion sampler anneals its own temperature (`diffusion.t_max`,
`diffusion.t_min`). Extensions: `diffusion` (DiffusionParams' fields) and `diffusing` (denoise drafts as SSE comments
while streaming). `RequestLimits` caps the work one request may ask for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from diffusiongemma_sdk._backend import GenerationRequest
from diffusiongemma_sdk._errors import InvalidRequestError, describe_validation_error
from diffusiongemma_sdk._messages import normalize_messages
from diffusiongemma_sdk._tools import Tool
from diffusiongemma_sdk._types import DiffusionParams, Message
from diffusiongemma_sdk.server._defaults import DEFAULT_MAX_DENOISING_STEPS_LIMIT, DEFAULT_MAX_TOKENS_LIMIT
from diffusiongemma_sdk.server._errors import ServerError, invalid, unsupported

__all__ = [
    "ALWAYS_REFUSED",
    "SEED_RANGE",
    "ChatCall",
    "ChatCompletionBody",
    "RequestLimits",
    "parse_chat_body",
    "parse_json_object",
    "to_chat_call",
]

_MESSAGE_INDEX = re.compile(r"^messages\[(\d+)\]")
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's: a 64-bit signed integer
MAX_JSON_DEPTH = 64  # deeper bodies are refused: nothing valid nests so deep, and recursion elsewhere could fail


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionSpec(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class _NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _NamedFunction


class ChatTemplateKwargs(_Strict):
    enable_thinking: bool | None = None


class JsonSchemaFormat(_Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class MessageSpec(BaseModel):
    """The shape of one message; fields OpenAI adds to assistant messages (`refusal`, `annotations`) pass."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class ChatCompletionBody(_Strict):
    """`POST /v1/chat/completions`, as far as this server reads it."""

    model: str
    messages: list[MessageSpec] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: str | list[str] | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    response_format: ResponseFormat | None = None
    diffusion: dict[str, Any] | None = None
    diffusing: bool = False
    # accepted (within OpenAI's ranges) and ignored: the sampler anneals from diffusion.t_max to diffusion.t_min
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    # OpenAI parameters honoured only with values that ask for nothing (see _REFUSED)
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    reasoning_effort: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None
    verbosity: Any = None
    # request metadata: accepted, changes nothing
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


# parameter → (value that asks for nothing, or None when any value is refused; why)
_REFUSED: dict[str, tuple[Callable[[Any], bool] | None, str]] = {
    "n": (lambda v: v == 1, "only one choice per request (n=1) is served"),
    "presence_penalty": (lambda v: v == 0, "the diffusion sampler applies no penalties"),
    "frequency_penalty": (lambda v: v == 0, "the diffusion sampler applies no penalties"),
    "logprobs": (lambda v: v is False, "log probabilities are not returned"),
    "top_logprobs": (lambda v: v == 0, "log probabilities are not returned"),
    "logit_bias": (lambda v: not v, "logit biases are not applied"),
    "reasoning_effort": (None, "use chat_template_kwargs.enable_thinking to turn thinking on or off"),
    "modalities": (lambda v: v == ["text"], "the model answers with text only"),
    "audio": (None, "the model answers with text only"),
    "prediction": (None, "predicted outputs are not supported"),
    "web_search_options": (None, "web search is not supported"),
    "functions": (None, "use 'tools' instead of the legacy 'functions'"),
    "function_call": (None, "use 'tool_choice' instead of the legacy 'function_call'"),
    "verbosity": (None, "verbosity is not supported"),
}
ALWAYS_REFUSED = frozenset(name for name, (accepts, _) in _REFUSED.items() if accepts is None)
"""OpenAI parameters refused whatever their value."""


@dataclass(frozen=True)
class RequestLimits:
    """The most work one request may ask for; a request over a limit gets a 400 (None: no limit)."""

    max_tokens: int | None = DEFAULT_MAX_TOKENS_LIMIT
    max_denoising_steps: int | None = DEFAULT_MAX_DENOISING_STEPS_LIMIT

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_denoising_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"the {name} limit must be at least 1 (or None for no limit)")


@dataclass(frozen=True)
class ChatCall:
    """One chat-completions call, translated."""

    request: GenerationRequest
    stream: bool
    include_usage: bool
    single_tool_call: bool


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = (
            f" ({exc.msg} at line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        )
        raise invalid(f"The request body is not valid JSON{detail}.", code="invalid_json") from None
    if not isinstance(value, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    problem = _structure_problem(value, MAX_JSON_DEPTH)
    if problem:
        raise invalid(f"The request body {problem}.", code="invalid_json")
    return value


def _structure_problem(value: dict[str, Any], depth_limit: int) -> str | None:
    """Why a body that parsed cannot be used: nested too deeply, or text that is not Unicode."""
    level: list[Any] = [value]
    for _ in range(depth_limit):
        children: list[Any] = []
        for item in level:
            for child in [*item, *item.values()] if isinstance(item, dict) else item:
                if isinstance(child, (dict, list)):
                    children.append(child)
                elif isinstance(child, str) and not _is_unicode(child):
                    return "has a string with an unpaired UTF-16 surrogate (a lone escape such as \\ud800)"
        if not children:
            return None
        level = children
    return f"nests arrays and objects more than {depth_limit} deep"


def _is_unicode(text: str) -> bool:
    """False for text with lone surrogates: JSON escapes can carry them, but no UTF-8 encoder takes them."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_constant(name: str) -> Any:
    """`NaN`, `Infinity` and `-Infinity` are Python's extensions, not JSON."""
    raise ValueError(f"{name} is not a JSON value")


def parse_chat_body(data: dict[str, Any]) -> ChatCompletionBody:
    """The body's shape checked field by field, or a 400 naming the first bad field."""
    try:
        body = ChatCompletionBody.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc, data) from None
    for name, (accepts, why) in _REFUSED.items():
        value = getattr(body, name)
        if value is not None and (accepts is None or not accepts(value)):
            raise unsupported(name, f"Unsupported parameter '{name}': {why}.")
    return body


def to_chat_call(body: ChatCompletionBody, limits: RequestLimits = RequestLimits()) -> ChatCall:
    """The `GenerationRequest` for a checked body, refusing what `limits` forbid.

    What the served backend supports is not checked here: the client that runs the request does that, as for
    every other caller, and its refusals become 400s.
    """
    if body.stream_options is not None and not body.stream:
        raise invalid("'stream_options' is only allowed with 'stream': true.", param="stream_options")
    if body.diffusing and not body.stream:
        raise invalid("'diffusing' sends denoise drafts while streaming; it needs 'stream': true.", param="diffusing")
    fields: dict[str, Any] = {
        "messages": _messages(body.messages),
        "max_tokens": _max_tokens(body, limits.max_tokens),
        "thinking": body.chat_template_kwargs.enable_thinking if body.chat_template_kwargs else None,
        "tools": _tools(body.tools or []),
        "tool_choice": body.tool_choice.function.name
        if isinstance(body.tool_choice, NamedToolChoice)
        else body.tool_choice,
        "diffusion": _diffusion(body.diffusion, limits.max_denoising_steps),
        "seed": body.seed,
        "stop": [body.stop] if isinstance(body.stop, str) else list(body.stop or []),
        "response_schema": _response_schema(body.response_format),
        "drafts": body.diffusing,
    }
    try:
        request = GenerationRequest(**fields)
    except ValidationError as exc:
        param = ".".join(str(part) for part in exc.errors()[0]["loc"]) or None
        raise invalid(f"Invalid request: {describe_validation_error(exc)}.", param=param) from None
    return ChatCall(
        request=request,
        stream=body.stream,
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
        single_tool_call=body.parallel_tool_calls is False,
    )


def _messages(specs: list[MessageSpec]) -> list[Message]:
    raw = []
    for spec in specs:
        message = spec.model_dump(exclude_none=True)
        if message["role"] == "developer":  # OpenAI's newer name for the system role
            message["role"] = "system"
        raw.append(message)
    try:
        return normalize_messages(raw)
    except InvalidRequestError as exc:
        index = _MESSAGE_INDEX.match(str(exc))
        raise invalid(str(exc), param=index.group(0) if index else "messages") from None


def _tools(specs: list[ToolSpec]) -> list[Tool]:
    tools: list[Tool] = []
    for index, spec in enumerate(specs):
        where = f"tools[{index}].function"
        parameters = spec.function.parameters if spec.function.parameters is not None else {"type": "object"}
        problem = _schema_problem(parameters)
        if problem:
            raise invalid(f"Invalid schema for tool {spec.function.name!r}: {problem}.", param=f"{where}.parameters")
        try:
            tool = Tool(name=spec.function.name, description=spec.function.description or "", parameters=parameters)
        except ValidationError as exc:
            raise invalid(f"Invalid tool: {exc.errors()[0]['msg']}.", param=f"{where}.name") from None
        if any(other.name == tool.name for other in tools):
            raise invalid(f"Tool {tool.name!r} is declared twice.", param=f"{where}.name")
        tools.append(tool)
    return tools


def _schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why a tool's parameters are not a JSON schema of an object, if they are not."""
    if schema.get("type", "object") != "object":
        return f"the parameters must be a JSON schema of type 'object', not {schema.get('type')!r}"
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping) or not all(isinstance(p, Mapping) for p in properties.values()):
        return "'properties' must map each parameter name to a JSON schema object"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        return "'required' must be a list of parameter names"
    missing = [name for name in required if name not in properties]
    if missing:
        return f"'required' names parameters that 'properties' lacks: {', '.join(missing)}"
    try:
        json.dumps(schema)
    except (TypeError, ValueError):
        return "it is not plain JSON"
    return None


def _max_tokens(body: ChatCompletionBody, limit: int | None) -> int | None:
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise invalid("'max_tokens' and 'max_completion_tokens' disagree; send one of them.", param="max_tokens")
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    value: int | None = getattr(body, param)
    if value is not None and limit is not None and value > limit:
        raise invalid(f"'{param}' is {value}; this server allows at most {limit} tokens per request.", param=param)
    return value


def _diffusion(raw: dict[str, Any] | None, steps_limit: int | None) -> DiffusionParams | None:
    if raw is None:
        return None
    try:
        params = DiffusionParams.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            known = ", ".join(DiffusionParams.model_fields)
            message = f"Unknown diffusion setting {field!r}; known: {known}."
            raise invalid(message, param=f"diffusion.{field}", code="unknown_parameter") from None
        param = f"diffusion.{field}" if field else "diffusion"
        raise invalid(f"Invalid value for '{param}': {error['msg']}.", param=param) from None
    steps = params.max_denoising_steps
    if steps is not None and steps_limit is not None and steps > steps_limit:
        raise invalid(
            f"'diffusion.max_denoising_steps' is {steps}; this server allows at most {steps_limit}.",
            param="diffusion.max_denoising_steps",
        )
    return params


def _response_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    if response_format.json_schema is None:
        raise invalid("A 'json_schema' response_format needs 'json_schema'.", param="response_format.json_schema")
    return response_format.json_schema.schema_


def _from_validation_error(exc: ValidationError, data: Mapping[str, Any]) -> ServerError:
    error = exc.errors()[0]
    param = _param_path(error["loc"], data)
    kind = error["type"]
    if kind == "extra_forbidden":
        return invalid(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    code = "invalid_type" if kind.endswith("_type") or kind in ("literal_error", "union_tag_invalid") else None
    return invalid(f"Invalid value for '{param}': {error['msg']}.", param=param, code=code or "invalid_value")


def _param_path(loc: tuple[int | str, ...], data: Any) -> str:
    """`messages[0].content` for a pydantic location, leaving out the union-member tags pydantic adds."""
    path = ""
    for part in loc:
        if isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
            path, data = f"{path}[{part}]", data[part]
        elif isinstance(part, str) and isinstance(data, Mapping) and part in data:
            path, data = f"{path}.{part}" if path else part, data[part]
        elif isinstance(part, str) and isinstance(data, Mapping) and not path:
            path, data = part, None  # a missing top-level field
        elif isinstance(part, str) and isinstance(data, Mapping):
            path, data = f"{path}.{part}", None  # a missing nested field
    return path or "body"
