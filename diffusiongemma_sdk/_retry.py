"""Retries of transient failures: connection errors, 408, 409, 429, 5xx and NVCF's "DEGRADED function" 400.

`Retry-After` is honoured (up to a minute; a longer wait is no job for a retry loop); otherwise the delay doubles
from half a second, with jitter. The client retries every request this way, whatever the backend.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from diffusiongemma_sdk._errors import APIConnectionError, APIStatusError

__all__ = ["retrying", "should_retry"]

T = TypeVar("T")
logger = logging.getLogger("diffusiongemma_sdk")

MAX_RETRY_AFTER = 60.0
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
_RETRY_STATUSES = frozenset({408, 409, 429})
_TRANSIENT_400 = "DEGRADED function"


async def retrying(attempt: Callable[[], Awaitable[T]], max_retries: int) -> T:
    """`await attempt()`, again after each transient failure, at most `max_retries` more times."""
    retries = AsyncRetrying(
        stop=stop_after_attempt(max_retries + 1),
        wait=_retry_delay,
        retry=retry_if_exception(should_retry),
        sleep=anyio.sleep,
        before_sleep=_log_retry,
        reraise=True,
    )
    async for state in retries:
        with state:
            return await attempt()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def should_retry(exc: BaseException) -> bool:
    """Whether a failure is transient, so that the same request may succeed later."""
    if isinstance(exc, APIConnectionError):
        return True
    if not isinstance(exc, APIStatusError):
        return False
    if exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER:
        return False
    if exc.status_code == 400:
        return _TRANSIENT_400 in exc.message
    return exc.status_code in _RETRY_STATUSES or exc.status_code >= 500


def _retry_delay(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, APIStatusError) and exc.retry_after is not None:
        return min(float(exc.retry_after), MAX_RETRY_AFTER)
    backoff = min(INITIAL_RETRY_DELAY * 2.0 ** (state.attempt_number - 1), MAX_RETRY_DELAY)
    return backoff * (1 - 0.25 * random.random())


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    logger.info("Retrying after %s (attempt %d, waiting %.2f s)", type(exc).__name__, state.attempt_number, delay)
