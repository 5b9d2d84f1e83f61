"""diffusiongemma-sdk: one typed client for Google's DiffusionGemma on NIM, OpenAI-compatible servers and local engines.

from diffusiongemma_sdk import AsyncDiffusionGemma

async with AsyncDiffusionGemma("nim") as client:
    generation = await client.generate("Sort these numbers: 17 4 9")
    print(generation.text)
"""

from diffusiongemma_sdk._accumulator import GenerationAccumulator
from diffusiongemma_sdk._backend import (
    Backend,
    BackendOptions,
    Capabilities,
    GenerationRequest,
    ModelInfo,
    ToolChoiceForm,
)
from diffusiongemma_sdk._client import AsyncDiffusionGemma, GenerateOptions, GenerationStream, RequestOptions
from diffusiongemma_sdk._errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BackendNotInstalledError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    DiffusionGemmaError,
    GenerationCancelled,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    OutputValidationError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    UnprocessableEntityError,
    UnsupportedParameterError,
)
from diffusiongemma_sdk._policy import UnsupportedParameterWarning
from diffusiongemma_sdk._sync import DiffusionGemma, SyncGenerationStream
from diffusiongemma_sdk._tools import Tool
from diffusiongemma_sdk._types import (
    CanvasEvent,
    DenoiseStepEvent,
    DiffusionParams,
    DoneEvent,
    FinishReason,
    Generation,
    ImagePart,
    Message,
    ReasoningEvent,
    StreamEvent,
    TextPart,
    ToolCall,
    ToolCallEvent,
    Usage,
    UsageEvent,
)
from diffusiongemma_sdk._version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncDiffusionGemma",
    "AuthenticationError",
    "Backend",
    "BackendNotInstalledError",
    "BackendOptions",
    "BadRequestError",
    "CanvasEvent",
    "Capabilities",
    "ConfigurationError",
    "ConflictError",
    "DenoiseStepEvent",
    "DiffusionGemma",
    "DiffusionGemmaError",
    "DiffusionParams",
    "DoneEvent",
    "FinishReason",
    "GenerateOptions",
    "Generation",
    "GenerationAccumulator",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationStream",
    "ImagePart",
    "InternalServerError",
    "InvalidRequestError",
    "Message",
    "ModelInfo",
    "NotFoundError",
    "OutputValidationError",
    "PermissionDeniedError",
    "RateLimitError",
    "ReasoningEvent",
    "RequestOptions",
    "RequestTimeoutError",
    "StreamEvent",
    "SyncGenerationStream",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolCallEvent",
    "ToolChoiceForm",
    "UnprocessableEntityError",
    "UnsupportedParameterError",
    "UnsupportedParameterWarning",
    "Usage",
    "UsageEvent",
    "__version__",
]
