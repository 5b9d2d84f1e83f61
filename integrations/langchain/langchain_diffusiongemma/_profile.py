"""The LangChain model profile of a backend, from its capabilities.

Before the first call, a backend spec's declared capabilities (nothing is loaded or asked); once the client exists,
its own (an `openai:` server's advertised ones, a checkpoint's context window).
"""

from __future__ import annotations

from langchain_core.language_models import ModelProfile

from diffusiongemma_sdk import Capabilities
from diffusiongemma_sdk._remote import NIM_CAPABILITIES, OPENAI_COMPATIBLE_CAPABILITIES
from diffusiongemma_sdk._spec import BackendSpec
from diffusiongemma_sdk.testing import TEST_CAPABILITIES

__all__ = ["declared_capabilities", "profile_from"]


def declared_capabilities(spec: str | None) -> Capabilities | None:
    """What a backend spec's scheme declares, without building it; None when unknown until it is built."""
    if not spec:
        return None
    scheme = BackendSpec.parse(spec).scheme
    if scheme in ("torch", "gguf"):
        try:  # the local engines' chat templates need jinja2, which comes with their packages
            from diffusiongemma_sdk._local.request import LOCAL_CAPABILITIES
        except ImportError:
            return None
        return LOCAL_CAPABILITIES
    return {"nim": NIM_CAPABILITIES, "openai": OPENAI_COMPATIBLE_CAPABILITIES, "test": TEST_CAPABILITIES}.get(scheme)


def profile_from(capabilities: Capabilities) -> ModelProfile:
    """The profile LangChain (and `create_agent`'s choice of structured-output strategy) reads."""
    profile = ModelProfile(
        text_inputs=True,
        text_outputs=True,
        image_inputs=capabilities.images,
        image_url_inputs=capabilities.images,
        tool_calling=capabilities.tools,
        tool_call_streaming=capabilities.tools,
        tool_choice=capabilities.tools and len(capabilities.tool_choice) > 1,
        reasoning_output=capabilities.thinking,
        structured_output=capabilities.native_structured_output,
    )
    if capabilities.context_window is not None:
        profile["max_input_tokens"] = capabilities.context_window
    return profile
