"""A request made ready for a local engine: its sampler settings, prompt ids, token budget, seed and progress, and
the capabilities every local engine declares."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Protocol

from diffusiongemma_sdk._backend import Capabilities, GenerationRequest
from diffusiongemma_sdk._gemma4 import TOOL_CALL_OPEN
from diffusiongemma_sdk._local.chat import forced_call
from diffusiongemma_sdk._local.progress import Detokenizer, RequestProgress
from diffusiongemma_sdk._local.settings import GenerationDefaults, SamplerSettings, token_budget
from diffusiongemma_sdk._tools import Tool
from diffusiongemma_sdk._types import Message

__all__ = ["LOCAL_CAPABILITIES", "LocalChat", "PreparedRequest", "local_capabilities", "prepare_request"]


class LocalChat(Detokenizer, Protocol):
    """A checkpoint's chat template and tokenizer, as a local engine uses them."""

    def render(self, messages: list[Message], *, tools: list[Tool], thinking: bool | None) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def token_id(self, text: str) -> int | None: ...


LOCAL_CAPABILITIES = Capabilities(
    per_request_diffusion=True,
    denoise_stream=True,
    tools=True,
    images=False,  # vision weights are not loaded yet
    thinking=True,
    native_structured_output=False,
    logprobs=False,
    seed=True,
    max_concurrency=1,
)
"""What the local engines (`torch:`, `gguf:`) honour, before a checkpoint's tokenizer or settings narrow it."""


def local_capabilities(chat: LocalChat, *, max_concurrency: int, context_window: int) -> Capabilities:
    """`LOCAL_CAPABILITIES` for one checkpoint. `tool_choice` is enforced through the tool-call marker (banned for
    "none", written first for a forced call), so a tokenizer without it gets only "auto"."""
    forms = LOCAL_CAPABILITIES.tool_choice if chat.token_id(TOOL_CALL_OPEN) is not None else ("auto",)
    return LOCAL_CAPABILITIES.model_copy(
        update={"tool_choice": forms, "max_concurrency": max_concurrency, "context_window": context_window}
    )


@dataclass(frozen=True)
class PreparedRequest:
    """What an engine runs for one request; `seed` is in [0, 2**64), drawn at random when the request set none."""

    settings: SamplerSettings
    prompt_ids: list[int]
    progress: RequestProgress
    seed: int


def prepare_request(
    request: GenerationRequest,
    *,
    backend: str,
    chat: LocalChat,
    defaults: GenerationDefaults,
    canvas_length: int,
    context: int,
    default_max_tokens: int,
    every: int,
) -> PreparedRequest:
    """Render, tokenize and check a request. `tool_choice` "none" bans the tool-call marker; "required" and a tool's
    name end the prompt with the call's opening, so the answer is that call."""
    settings = defaults.resolve(request.diffusion)
    call_marker = chat.token_id(TOOL_CALL_OPEN)
    if request.tool_choice == "none" and call_marker is not None:
        settings = dataclasses.replace(settings, banned_token_ids=(call_marker,))
    forced = forced_call(request.tool_choice, request.tools)
    prompt = chat.render(request.messages, tools=request.tools, thinking=request.thinking)
    prompt_ids = chat.encode(prompt + (forced.opening if forced is not None else ""))
    max_tokens = token_budget(
        len(prompt_ids), request.max_tokens, default_max_tokens, canvas=canvas_length, context=context
    )
    progress = RequestProgress(
        backend=backend,
        chat=chat,
        prompt_tokens=len(prompt_ids),
        max_tokens=max_tokens,
        stop_tokens=set(defaults.eos_token_ids),
        stop_strings=request.stop,
        pad_token_id=defaults.pad_token_id,
        drafts=request.drafts,
        every=every,
        forced=forced,
    )
    # any integer seed wraps into [0, 2**64), as torch wraps negative ones
    seed = request.seed % 2**64 if request.seed is not None else secrets.randbits(63)
    return PreparedRequest(settings=settings, prompt_ids=prompt_ids, progress=progress, seed=seed)
