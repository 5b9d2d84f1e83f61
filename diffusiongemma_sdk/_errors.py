"""The SDK's exception hierarchy. Every error says what went wrong and what to do about it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from diffusiongemma_sdk._types import Generation

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BackendNotInstalledError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "DiffusionGemmaError",
    "GenerationCancelled",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "OutputValidationError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "UnprocessableEntityError",
    "UnsupportedParameterError",
    "describe_validation_error",
    "status_error_class",
]


class DiffusionGemmaError(Exception):
    """Base class of every error this SDK raises."""


class ConfigurationError(DiffusionGemmaError):
    """The client or a backend was configured wrongly (bad spec string, missing key, bad option)."""


class InvalidRequestError(DiffusionGemmaError, ValueError):
    """A request's arguments are malformed (an unreadable message, a bad tool, a wrong option value)."""


class BackendNotInstalledError(ConfigurationError):
    """A backend spec names a scheme whose distribution is not installed."""

    def __init__(self, scheme: str, distribution: str | None) -> None:
        self.scheme = scheme
        self.distribution = distribution
        if distribution is None:
            hint = "install a distribution that registers it in the 'diffusiongemma_sdk.backends' entry-point group"
        else:
            hint = f"install it with: pip install {distribution}"
        super().__init__(f"The '{scheme}:' backend is not installed; {hint}.")


class UnsupportedParameterError(DiffusionGemmaError):
    """A request uses a feature the chosen backend does not support."""

    def __init__(self, backend: str, parameter: str, detail: str = "") -> None:
        self.backend = backend
        self.parameter = parameter
        message = f"Backend '{backend}' does not support '{parameter}'"
        message += f": {detail}" if detail else "."
        message += (
            " Remove it, choose a backend that supports it, or create the client with"
            " unsupported='warn' or 'drop' to drop it."
        )
        super().__init__(message)


class GenerationCancelled(DiffusionGemmaError):
    """A generation was stopped before it finished; `partial` holds what was produced."""

    def __init__(self, message: str = "The generation was cancelled.", *, partial: Generation | None = None):
        self.partial = partial
        super().__init__(message)


class OutputValidationError(DiffusionGemmaError):
    """The model's answer did not validate against the requested schema, after every re-ask."""

    def __init__(self, message: str, *, attempts: list[str], errors: list[str], usage: Any = None) -> None:
        self.attempts = attempts
        self.errors = errors
        self.usage = usage
        super().__init__(message)


class APIError(DiffusionGemmaError):
    """A remote server answered with an error, or could not be reached.

    `partial` holds the part of a streamed generation delivered before the error, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        body: Any = None,
        request_id: str | None = None,
        partial: Generation | None = None,
    ) -> None:
        self.message = message
        self.body = body
        self.request_id = request_id
        self.partial = partial
        super().__init__(message)

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request id: {self.request_id})"
        return self.message


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The request, or a stream that stopped sending bytes, ran past its timeout."""


class APIResponseValidationError(APIError):
    """The server's answer could not be read (truncated JSON, malformed stream)."""


class APIStatusError(APIError):
    """The server answered with an HTTP error status.

    `retry_after` holds the wait in seconds the server asked for (`Retry-After`, `retry-after-ms`), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        request_id: str | None = None,
        partial: Generation | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.retry_after = retry_after
        super().__init__(message, body=body, request_id=request_id, partial=partial)


class BadRequestError(APIStatusError):
    """400: the server rejected the request's content."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, malformed or wrong."""


class PermissionDeniedError(APIStatusError):
    """403: the key is valid but may not use this model or route."""


class NotFoundError(APIStatusError):
    """404: the model id or the route does not exist on this server."""


class RequestTimeoutError(APIStatusError):
    """408: the server gave up waiting for the request."""


class ConflictError(APIStatusError):
    """409: the server reported a conflict."""


class UnprocessableEntityError(APIStatusError):
    """422: the request body failed the server's validation."""


class RateLimitError(APIStatusError):
    """429: too many requests; slow down or raise `max_retries`."""


class InternalServerError(APIStatusError):
    """5xx: the server failed."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: RequestTimeoutError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_ERRORS.get(status_code, APIStatusError)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem of a pydantic error: `field.path: message`."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
    )
