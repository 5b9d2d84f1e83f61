"""An agent middleware for `langchain.agents.create_agent`: re-ask with more effort when an answer fails a check.

A diffusion model's effort is a dial (`effort=`: more denoising steps, fewer tokens accepted per step), so a failed
answer can be asked again at a higher level instead of looping with an error message. Needs `langchain`
(`pip install 'langchain-diffusiongemma[agents]'`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain.agents.structured_output import StructuredOutputError
from langchain_core.messages import AIMessage

from langchain_diffusiongemma._effort import EFFORT_LEVELS, Effort, more_effort

__all__ = ["EffortEscalationMiddleware", "Validator"]

Validator = Callable[[AIMessage], bool | str | None]
"""Checks an answer: True or None when it is fine, False or a reason (str) when it is not."""


class EffortEscalationMiddleware(AgentMiddleware):
    """Re-runs a model call at the next effort level when its answer fails `validator` or the agent's response
    schema, up to "high"; the last answer is kept whatever it is.

    The first call keeps the request's effort (`model_settings["effort"]`, else the model's `effort`, else
    `start`). Each escalation is recorded in the final message's `response_metadata["effort_escalation"]`.
    """

    def __init__(self, validator: Validator | None = None, *, start: Effort = "medium") -> None:
        super().__init__()
        if start not in EFFORT_LEVELS:
            raise ValueError(f"start must be one of {', '.join(EFFORT_LEVELS)}, not {start!r}")
        self.validator = validator
        self.start = start

    def wrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]
    ) -> ModelResponse[Any]:
        escalation = _Escalation(self, request)
        for attempt, last in escalation.attempts():
            try:
                response = handler(attempt)
            except StructuredOutputError as exc:
                escalation.schema_failed(exc, last)
                continue
            if (accepted := escalation.judged(response, last)) is not None:
                return accepted
        raise AssertionError("unreachable: the last level is accepted")  # pragma: no cover

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]
    ) -> ModelResponse[Any]:
        escalation = _Escalation(self, request)
        for attempt, last in escalation.attempts():
            try:
                response = await handler(attempt)
            except StructuredOutputError as exc:
                escalation.schema_failed(exc, last)
                continue
            if (accepted := escalation.judged(response, last)) is not None:
                return accepted
        raise AssertionError("unreachable: the last level is accepted")  # pragma: no cover


class _Escalation:
    """One model call's attempts, from its effort level up, and why each failed."""

    def __init__(self, middleware: EffortEscalationMiddleware, request: ModelRequest[Any]) -> None:
        self.middleware = middleware
        self.request = request
        first: Effort = (
            request.model_settings.get("effort") or getattr(request.model, "effort", None) or middleware.start
        )
        self.levels = [first, *more_effort(first)]
        self.failures: list[dict[str, str]] = []

    def attempts(self) -> list[tuple[ModelRequest[Any], bool]]:
        """The request at each level, and whether it is the last."""
        settings = self.request.model_settings
        return [
            (self.request.override(model_settings={**settings, "effort": effort}), index == len(self.levels) - 1)
            for index, effort in enumerate(self.levels)
        ]

    def schema_failed(self, error: StructuredOutputError, last: bool) -> None:
        if last:
            raise error
        self._failed(f"schema: {error}")

    def judged(self, response: ModelResponse[Any], last: bool) -> ModelResponse[Any] | None:
        """The response when it passes (or is the last attempt), with the failures before it recorded."""
        problem = self._problem(response)
        if problem is not None and not last:
            self._failed(problem)
            return None
        for message in response.result:
            if isinstance(message, AIMessage) and self.failures:
                message.response_metadata["effort_escalation"] = self.failures
        return response

    def _failed(self, problem: str) -> None:
        self.failures.append({"effort": self.levels[len(self.failures)], "problem": problem})

    def _problem(self, response: ModelResponse[Any]) -> str | None:
        message = next((m for m in response.result if isinstance(m, AIMessage)), None)
        if message is None:
            return None
        if self.request.response_format is not None and response.structured_response is None and message.tool_calls:
            return "schema: the structured answer did not validate"
        if self.middleware.validator is None:
            return None
        verdict = self.middleware.validator(message)
        if verdict is True or verdict is None:
            return None
        return verdict or "the validator refused the answer"
