"""Polling for a condition that another thread or task makes true."""

from __future__ import annotations

from collections.abc import Callable

import anyio

__all__ = ["wait_until"]


async def wait_until(condition: Callable[[], bool], *, timeout: float) -> None:
    """Return once `condition()` holds; fail after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110  (the condition may live in another thread)
            await anyio.sleep(0.01)
