"""The request contract: for every `GenerationRequest` field, whether a backend honours it, from its capabilities.

A field a backend cannot honour is refused by the client's `unsupported` policy: it raises
`UnsupportedParameterError` ("error"), or is dropped with a warning ("warn") or quietly ("drop"). `FIELD_RULES`
decides every field; the docs' contract table is generated from it (`contract_table`).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffusiongemma_sdk._backend import Capabilities, GenerationRequest, tool_choice_form
from diffusiongemma_sdk._errors import UnsupportedParameterError
from diffusiongemma_sdk._types import Message, TextPart

__all__ = [
    "FIELD_RULES",
    "FieldRule",
    "UnsupportedParameterWarning",
    "UnsupportedPolicy",
    "apply_policy",
    "contract_table",
    "refuse",
]

UnsupportedPolicy = Literal["error", "warn", "drop"]
HONOURED = "honoured"
REFUSED = "refused"


class UnsupportedParameterWarning(UserWarning):
    """A parameter the backend does not support was dropped from a request."""


@dataclass(frozen=True)
class FieldRule:
    """How one request field is decided on a backend.

    `refusal` says why a request's use of the field cannot be honoured (None: it is honoured, or not used);
    `drop` is the change that removes it; `parameter` is the name errors report; `declared` is what the contract
    table says for a backend with these capabilities.
    """

    parameter: str
    refusal: Callable[[GenerationRequest, Capabilities], str | None]
    drop: Callable[[GenerationRequest], Mapping[str, Any]]
    declared: Callable[[Capabilities], str]


def _never(request: GenerationRequest, capabilities: Capabilities) -> str | None:
    return None


def _nothing(request: GenerationRequest) -> Mapping[str, Any]:
    return {}


def _flag(
    supports: Callable[[Capabilities], bool], used: Callable[[GenerationRequest], bool], why: str = ""
) -> Callable[[GenerationRequest, Capabilities], str | None]:
    def refusal(request: GenerationRequest, capabilities: Capabilities) -> str | None:
        return why if used(request) and not supports(capabilities) else None

    return refusal


def _declared(capability: Callable[[Capabilities], bool]) -> Callable[[Capabilities], str]:
    return lambda capabilities: HONOURED if capability(capabilities) else REFUSED


def _images_refusal(request: GenerationRequest, capabilities: Capabilities) -> str | None:
    if capabilities.images or not any(message.images for message in request.messages):
        return None
    return "this backend reads text only"


def _tool_choice_refusal(request: GenerationRequest, capabilities: Capabilities) -> str | None:
    form = tool_choice_form(request.tool_choice)
    if form is None or form in capabilities.tool_choice:
        return None
    honoured = ", ".join(capabilities.tool_choice) or "none of them"
    return f"it cannot enforce tool_choice={request.tool_choice!r} (forms honoured: {honoured})"


def _tool_choice_declared(capabilities: Capabilities) -> str:
    if not capabilities.tools:
        return REFUSED
    return ", ".join(capabilities.tool_choice) if capabilities.tool_choice else REFUSED


FIELD_RULES: dict[str, FieldRule] = {
    "messages": FieldRule(
        "images",
        _images_refusal,
        lambda r: {"messages": [_without_images(m) for m in r.messages]},
        lambda c: "text and images" if c.images else "text (images refused)",
    ),
    "max_tokens": FieldRule("max_tokens", _never, _nothing, lambda c: HONOURED),
    "thinking": FieldRule(
        "thinking",
        _flag(lambda c: c.thinking, lambda r: r.thinking is not None),
        lambda r: {"thinking": None},
        _declared(lambda c: c.thinking),
    ),
    "tools": FieldRule(
        "tools",
        _flag(lambda c: c.tools, lambda r: bool(r.tools)),
        lambda r: {"tools": [], "tool_choice": None},
        _declared(lambda c: c.tools),
    ),
    "tool_choice": FieldRule(
        "tool_choice", _tool_choice_refusal, lambda r: {"tool_choice": None}, _tool_choice_declared
    ),
    "diffusion": FieldRule(
        "diffusion",
        _flag(
            lambda c: c.per_request_diffusion,
            lambda r: r.diffusion is not None and not r.diffusion.is_empty(),
            "it applies its server-side diffusion settings to every request",
        ),
        lambda r: {"diffusion": None},
        _declared(lambda c: c.per_request_diffusion),
    ),
    "seed": FieldRule(
        "seed",
        _flag(lambda c: c.seed, lambda r: r.seed is not None),
        lambda r: {"seed": None},
        _declared(lambda c: c.seed),
    ),
    "stop": FieldRule(
        "stop", _flag(lambda c: c.stop, lambda r: bool(r.stop)), lambda r: {"stop": []}, _declared(lambda c: c.stop)
    ),
    "response_schema": FieldRule(
        "response_schema",
        _flag(
            lambda c: c.native_structured_output,
            lambda r: r.response_schema is not None,
            "it does not constrain its output to a JSON schema; response_model= prompts for the schema and "
            "validates the answer instead",
        ),
        lambda r: {"response_schema": None},
        lambda c: HONOURED if c.native_structured_output else "refused (response_model= prompts and validates)",
    ),
    "drafts": FieldRule(
        "drafts",
        _flag(lambda c: c.denoise_stream, lambda r: r.drafts, "it does not stream denoise drafts"),
        lambda r: {"drafts": False},
        _declared(lambda c: c.denoise_stream),
    ),
    "timeout": FieldRule("timeout", _never, _nothing, lambda c: "honoured (the client's deadline)"),
    "max_retries": FieldRule("max_retries", _never, _nothing, lambda c: "honoured (the client's retries)"),
}


def apply_policy(
    request: GenerationRequest, capabilities: Capabilities, *, backend: str, policy: UnsupportedPolicy
) -> GenerationRequest:
    """Return the request as the backend may receive it; raise, warn or drop for each field it cannot honour."""
    for rule in FIELD_RULES.values():
        why = rule.refusal(request, capabilities)
        if why is None:
            continue
        refuse(rule.parameter, why, backend=backend, policy=policy)
        request = request.model_copy(update=dict(rule.drop(request)))
    return request


def refuse(parameter: str, why: str, *, backend: str, policy: UnsupportedPolicy) -> None:
    """Apply the policy to a parameter the backend cannot honour: raise ("error") or warn ("warn"); the caller drops
    it. Integrations use it for parameters of their own that no request field carries (LangChain's `temperature`)."""
    if policy == "error":
        raise UnsupportedParameterError(backend, parameter, why)
    if policy == "warn":
        warnings.warn(
            f"Backend '{backend}' does not support '{parameter}'; it was dropped from the request.",
            UnsupportedParameterWarning,
            stacklevel=_stacklevel_outside_the_sdk(),
        )


def contract_table(backends: Mapping[str, Capabilities]) -> str:
    """A markdown table: one row per `GenerationRequest` field, one column per backend, what each declares."""
    names = list(backends)
    lines = ["| field | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for field, rule in FIELD_RULES.items():
        cells = [rule.declared(capabilities) for capabilities in backends.values()]
        lines.append(f"| `{field}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _without_images(message: Message) -> Message:
    if isinstance(message.content, str):
        return message
    return message.model_copy(update={"content": [p for p in message.content if isinstance(p, TextPart)]})


_PACKAGE = str(Path(__file__).parent)


def _stacklevel_outside_the_sdk() -> int:
    """The `warnings.warn` stack level of the first caller outside this package, so the warning names user code."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level
