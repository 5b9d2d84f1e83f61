"""Turn what goes wrong into one `error:` line and one `hint:` line on stderr, and an exit code."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import click
import typer
from rich.console import Console
from rich.text import Text

from diffusiongemma_sdk._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BackendNotInstalledError,
    ConfigurationError,
    DiffusionGemmaError,
    GenerationCancelled,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnsupportedParameterError,
)

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "CommandError", "describe", "print_failure", "reporting_failures"]

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

_BACKEND_CHOICES = "nim (needs NVIDIA_API_KEY), openai:BASE_URL#MODEL, torch:DIR|HF-ID|demo, gguf:FILE"
_API_KEYS = "NVIDIA_API_KEY for nim, DIFFUSIONGEMMA_API_KEY for openai: servers"

# First match wins, so subclasses come before their bases.
_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (BackendNotInstalledError, "local backends come as extras: pip install 'diffusiongemma-sdk[torch]' (or [gguf])"),
    (
        ConfigurationError,
        f"check --backend SPEC (or DIFFUSIONGEMMA_BACKEND) and any --backend-option; backends: {_BACKEND_CHOICES}",
    ),
    (InvalidRequestError, "check the option values against --help"),
    (AuthenticationError, f"the program reads API keys from the environment only: {_API_KEYS}"),
    (PermissionDeniedError, f"this key may not use the model; check its permissions ({_API_KEYS})"),
    (NotFoundError, "check the base URL and the model id after '#' in --backend"),
    (RateLimitError, "the server is rate limiting: wait a little and try again"),
    (APITimeoutError, "the server took too long: lower --max-tokens, or check that the server is healthy"),
    (APIConnectionError, "check that the server named in --backend is running and reachable"),
    (APIStatusError, "the server refused or failed the request; rerun with --debug for the details"),
    (APIError, "the server's answer could not be used; rerun with --debug for the details"),
    (GenerationCancelled, "the generation stopped before it finished; run it again"),
    (DiffusionGemmaError, "rerun with --debug for the details"),
)

# Which option sets each request parameter, for UnsupportedParameterError.
_FLAGS = {"diffusion": "--steps", "seed": "--seed", "thinking": "--thinking"}


class CommandError(DiffusionGemmaError):
    """A problem a command found itself, with the hint that fixes it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def describe(error: Exception) -> tuple[str, str]:
    """The one-line message and the hint for an error."""
    if isinstance(error, CommandError):
        return str(error), error.hint
    if isinstance(error, UnsupportedParameterError):
        flag = _FLAGS.get(error.parameter, error.parameter)
        return (
            f"The backend '{error.backend}' does not support {flag}.",
            f"leave out {flag}, or choose a backend that supports it (torch: supports every option)",
        )
    if not isinstance(error, DiffusionGemmaError):
        return f"Unexpected {type(error).__name__}: {error}", "this looks like a bug: rerun with --debug and report it"
    hint = next(hint for kind, hint in _HINTS if isinstance(error, kind))
    return _headline(str(error)) or type(error).__name__, hint


def _headline(message: str) -> str:
    """The first line of a message. A first line ending in ':' introduces a list (of backend choices, which the
    hint names); its last sentence, the introduction, is dropped."""
    lines = message.strip().splitlines()
    first = lines[0] if lines else ""
    if first.endswith(":"):
        head, _, _ = first.rpartition(". ")
        first = f"{head}." if head else first.rstrip(":")
    return first


@contextmanager
def reporting_failures(debug: bool) -> Iterator[None]:
    """Run a command's body; report an error as `error:` and `hint:` lines and exit 1, or exit 130 on Ctrl-C.

    With `debug`, the traceback is printed before the two lines. Typer's own exits and usage errors pass through.
    """
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as error:
        print_failure(error, debug)
        raise typer.Exit(EXIT_FAILED) from None


def print_failure(error: Exception, debug: bool) -> None:
    """Print an error as its `error:` and `hint:` lines on stderr, after the traceback with `debug`."""
    if debug:
        traceback.print_exception(error)
    message, hint = describe(error)
    console = Console(stderr=True)
    console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    console.print(Text.assemble(("hint:", "bold cyan"), " ", hint), soft_wrap=True)
