"""`GET /openapi.json`: an OpenAPI 3.1 description of the server's routes, request bodies and answers.

Written by hand to say what this server accepts, not merely what parses: the one served model id, the fields of each
message role, tool names as the SDK allows them, the request limits, only the OpenAI parameters that can be honoured
(with the values they accept), and what the served backend's capabilities allow (images, tools, per-request
`diffusion` as `DiffusionParams`' own JSON schema, ...). Rules between fields (`stream_options` and `diffusing` need
`stream: true`, `tool_choice: required` needs `tools`, `max_tokens` equal to `max_completion_tokens`) are stated in
descriptions; breaking them is a 400. `tests/test_server_fuzz.py` fuzzes the server against this document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusiongemma_sdk._backend import Capabilities
from diffusiongemma_sdk._types import DiffusionParams
from diffusiongemma_sdk.server._inbound import SEED_RANGE, RequestLimits

__all__ = ["openapi_schema"]

_REF = "#/components/schemas/{}"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name)}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


_ERRORS = {
    "400": _error("A malformed request, or a parameter or capability the served model lacks."),
    "404": _error("Unknown model."),
    "413": _error("The body is over the server's limit."),
    "500": _error("An unexpected failure of the server."),
    "502": _error("The model's own server (a remote backend) failed or could not be reached."),
    "503": _error("The generation was cancelled (the server is shutting down)."),
    "504": _error("The model's own server did not answer in time."),
}
_UNAUTHORIZED = {"401": _error("Missing or wrong API key.")}


@dataclass(frozen=True)
class _Offers:
    """What a request may use here: the backend's capabilities, or anything the server drops rather than refuses."""

    images: bool
    tools: bool
    thinking: bool
    seed: bool
    diffusion: bool
    diffusing: bool
    structured_output: bool


def openapi_schema(
    model_id: str,
    limits: RequestLimits,
    capabilities: Capabilities,
    *,
    refuses_unsupported: bool = True,
    authenticated: bool = False,
) -> dict[str, Any]:
    """The OpenAPI document of a server serving `model_id` with `capabilities` under `limits`.

    `refuses_unsupported`: the client's policy is "error", so a capability the backend lacks is a 400 (else the
    server drops it and the schema allows it). `authenticated`: the server asks for a bearer key.
    """
    lenient = not refuses_unsupported
    offers = _Offers(
        images=capabilities.images or lenient,
        tools=capabilities.tools or lenient,
        thinking=capabilities.thinking or lenient,
        seed=capabilities.seed or lenient,
        diffusion=capabilities.per_request_diffusion or lenient,
        diffusing=capabilities.denoise_stream,
        structured_output=capabilities.native_structured_output,
    )
    auth = _UNAUTHORIZED if authenticated else {}
    security: dict[str, Any] = {"security": [{"bearer": []}]} if authenticated else {}
    paths = {
        "/v1/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "summary": "Generate the assistant's answer to a conversation (OpenAI's chat completions).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "The completion; with `stream: true`, `chat.completion.chunk` SSE events "
                        "ending with `data: [DONE]` (denoise drafts, asked for with `diffusing`, are SSE comments).",
                        "content": {
                            "application/json": {"schema": _ref("ChatCompletion")},
                            "text/event-stream": {"schema": _ref("StreamEvent")},
                        },
                    },
                    **_ERRORS,
                    **auth,
                },
                **security,
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The one model served here.",
                "responses": {
                    "200": _json("The model list.", _ref("ModelList")),
                    "500": _ERRORS["500"],
                    "502": _ERRORS["502"],
                    **auth,
                },
                **security,
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "retrieveModel",
                "summary": "One model, by id.",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": _json("The model.", _ref("Model")),
                    "404": _ERRORS["404"],
                    "500": _ERRORS["500"],
                    "502": _ERRORS["502"],
                    **auth,
                },
                **security,
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness, without a key.",
                "responses": {"200": _json("The server is up.", _ref("Health"))},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document, without a key.",
                "responses": {
                    "200": _json("The OpenAPI document.", {"type": "object"}),
                    "500": _ERRORS["500"],
                    "502": _ERRORS["502"],
                },
            }
        },
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "diffusiongemma-sdk OpenAI-compatible server",
            "version": "1",
            "description": f"Serves the model {model_id!r}. Errors have OpenAI's shape.",
        },
        "paths": paths,
        "components": {"schemas": _schemas(model_id, limits, offers)},
    }
    if authenticated:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schemas(model_id: str, limits: RequestLimits, offers: _Offers) -> dict[str, Any]:
    tokens: dict[str, Any] = {"type": "integer", "minimum": 1}
    if limits.max_tokens is not None:
        tokens["maximum"] = limits.max_tokens
    diffusion: dict[str, Any] = {"type": "object", "maxProperties": 0, "description": "Not taken by this model."}
    if offers.diffusion:
        diffusion = DiffusionParams.model_json_schema()
        if limits.max_denoising_steps is not None:
            diffusion["properties"]["max_denoising_steps"]["anyOf"][0]["maximum"] = limits.max_denoising_steps
    text: dict[str, Any] = {"type": "string"}
    text_part = {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": text},
    }
    image_parts = [
        {
            "type": "object",
            "required": ["type", "image_url"],
            "properties": {
                "type": {"const": "image_url"},
                "image_url": {"anyOf": [text, {"type": "object", "required": ["url"], "properties": {"url": text}}]},
            },
        },
        {"type": "object", "required": ["type", "url"], "properties": {"type": {"const": "image"}, "url": text}},
    ]
    no_calls = _nullable({"type": "array", "maxItems": 0})

    def message(roles: list[str], parts: list[dict[str, Any]], *required: str, **fields: Any) -> dict[str, Any]:
        content = {"anyOf": [text, {"type": "array", "items": {"anyOf": parts}}, {"type": "null"}]}
        return {
            "type": "object",
            "required": ["role", *required],
            "properties": {
                "role": {"type": "string", "enum": roles},
                "content": content,
                "name": _nullable(text),
                "tool_calls": no_calls,
                "tool_call_id": _nullable(text),
                "reasoning": _nullable(text),
                "reasoning_content": _nullable(text),
                **fields,
            },
        }

    calls = _nullable({"type": "array", "items": _ref("MessageToolCall")})
    return {
        "ChatCompletionRequest": {
            "type": "object",
            "required": ["model", "messages"],
            "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "enum": [model_id]},
                "messages": {"type": "array", "minItems": 1, "items": _ref("Message")},
                "stream": {"type": "boolean", "default": False},
                "stream_options": _nullable(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"include_usage": {"type": "boolean"}},
                        "description": "Only with `stream: true`.",
                    }
                ),
                "max_tokens": _nullable(tokens),
                "max_completion_tokens": _nullable({**tokens, "description": "Equal to `max_tokens` if both."}),
                "seed": _nullable({"type": "integer", "minimum": SEED_RANGE[0], "maximum": SEED_RANGE[1]})
                if offers.seed
                else {"type": "null"},
                "stop": {"anyOf": [text, {"type": "array", "items": text}, {"type": "null"}]},
                "tools": _nullable(
                    {"type": "array", "items": _ref("Tool")} if offers.tools else {"type": "array", "maxItems": 0}
                ),
                "tool_choice": {
                    "anyOf": [
                        {"type": "string", "enum": ["auto", "none", "required"] if offers.tools else ["auto", "none"]},
                        *([_ref("NamedToolChoice")] if offers.tools else []),
                        {"type": "null"},
                    ],
                    "description": "`required` or a named tool needs `tools`.",
                },
                "parallel_tool_calls": _nullable({"type": "boolean"}),
                "chat_template_kwargs": _nullable(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "enable_thinking": _nullable({"type": "boolean"}) if offers.thinking else {"type": "null"}
                        },
                    }
                ),
                "response_format": _nullable(_ref("ResponseFormat")),
                "diffusion": _nullable(_ref("DiffusionParams")),
                "diffusing": {
                    "type": "boolean",
                    "description": "Send each denoising step's draft as an SSE comment; needs `stream: true`.",
                    **({} if offers.diffusing else {"enum": [False]}),
                },
                "temperature": _nullable(
                    {"type": "number", "minimum": 0, "maximum": 2, "description": "Accepted and ignored."}
                ),
                "top_p": _nullable(
                    {"type": "number", "minimum": 0, "maximum": 1, "description": "Accepted and ignored."}
                ),
                "n": _nullable({"type": "integer", "enum": [1]}),
                "presence_penalty": _nullable({"type": "number", "enum": [0]}),
                "frequency_penalty": _nullable({"type": "number", "enum": [0]}),
                "logprobs": _nullable({"type": "boolean", "enum": [False]}),
                "top_logprobs": _nullable({"type": "integer", "enum": [0]}),
                "logit_bias": _nullable({"type": "object", "maxProperties": 0}),
                "modalities": _nullable({"type": "array", "items": {"enum": ["text"]}, "minItems": 1, "maxItems": 1}),
                "user": _nullable(text),
                "metadata": _nullable({"type": "object"}),
                "store": _nullable({"type": "boolean"}),
                "service_tier": _nullable(text),
                "safety_identifier": _nullable(text),
                "prompt_cache_key": _nullable(text),
            },
        },
        "Message": {
            "description": "One turn. Fields not listed are ignored.",
            "anyOf": [
                message(["system", "developer"], [text_part]),
                message(["user"], [text_part, *(image_parts if offers.images else [])]),
                message(["assistant"], [text_part], tool_calls=calls),
                message(["tool"], [text_part], "tool_call_id", tool_call_id={"type": "string", "minLength": 1}),
            ],
        },
        "MessageToolCall": {
            "type": "object",
            "required": ["function"],
            "properties": {
                "id": text,
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": text,
                        "arguments": {
                            "anyOf": [{"type": "string", "description": "A JSON object, as text."}, {"type": "object"}]
                        },
                    },
                },
            },
        },
        "Tool": {
            "type": "object",
            "required": ["type", "function"],
            "additionalProperties": False,
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,64}$"},
                        "description": _nullable(text),
                        "parameters": _nullable(
                            {
                                "type": "object",
                                "description": "A JSON schema of type `object`; `required` names only `properties`.",
                            }
                        ),
                        "strict": _nullable({"type": "boolean"}),
                    },
                },
            },
        },
        "NamedToolChoice": {
            "type": "object",
            "required": ["type", "function"],
            "additionalProperties": False,
            "description": "Names one of `tools`.",
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": text},
                },
            },
        },
        "ResponseFormat": {
            "type": "object",
            "required": ["type"],
            "additionalProperties": False,
            "properties": {
                "type": {
                    "type": "string",
                    "enum": ["text", "json_object", "json_schema"] if offers.structured_output else ["text"],
                },
                "json_schema": _nullable(
                    {
                        "type": "object",
                        "required": ["schema"],
                        "additionalProperties": False,
                        "properties": {
                            "name": text,
                            "description": _nullable(text),
                            "schema": {"type": "object"},
                            "strict": _nullable({"type": "boolean"}),
                        },
                        "description": "Needed by `json_schema`.",
                    }
                ),
            },
        },
        "DiffusionParams": diffusion,
        "ChatCompletion": {
            "type": "object",
            "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": text,
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": text,
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "message", "finish_reason"],
                        "properties": {
                            "index": {"type": "integer"},
                            "message": {
                                "type": "object",
                                "required": ["role", "content"],
                                "properties": {
                                    "role": {"const": "assistant"},
                                    "content": _nullable(text),
                                    "reasoning": text,
                                    "reasoning_content": text,
                                    "tool_calls": {"type": "array", "items": _ref("ResponseToolCall")},
                                },
                            },
                            "finish_reason": {"enum": ["stop", "length", "tool_calls", "abort"]},
                        },
                    },
                },
                "usage": _ref("Usage"),
            },
        },
        "StreamEvent": {
            "type": "object",
            "description": "One server-sent event (as OpenAPI 3.2's `itemSchema` would describe it).",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "string",
                    "description": "A `chat.completion.chunk` as JSON; `[DONE]` last; an `Error` if the stream fails.",
                }
            },
        },
        "ResponseToolCall": {
            "type": "object",
            "required": ["id", "type", "function"],
            "properties": {
                "id": text,
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name", "arguments"],
                    "properties": {"name": text, "arguments": text},
                },
            },
        },
        "Usage": {
            "type": "object",
            "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
                "canvases": {"type": "integer"},
                "denoising_steps": {"type": "integer"},
                "tokens_per_forward": {"type": "number"},
                "ttft_s": {"type": "number"},
                "wall_s": {"type": "number"},
            },
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by", "capabilities"],
            "properties": {
                "id": text,
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": text,
                "capabilities": {"type": "object", "description": "The served backend's `Capabilities`."},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
        },
        "Health": {
            "type": "object",
            "required": ["status", "model"],
            "properties": {"status": {"const": "ok"}, "model": text},
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": text,
                        "type": text,
                        "param": _nullable(text),
                        "code": _nullable(text),
                    },
                }
            },
        },
    }
