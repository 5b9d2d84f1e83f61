"""Ctrl-C for commands that run async work: the first one cancels the work cleanly, a second one stops at once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TypeVar

import anyio

__all__ = ["run_interruptible"]

T = TypeVar("T")


def run_interruptible(function: Callable[[], Awaitable[T]]) -> T:
    """Run `function` in a new event loop (from the main thread) and return its result.

    The first Ctrl-C cancels it through an anyio cancel scope, which a local engine honours after the step in flight
    (asyncio's own Ctrl-C handling cancels the task natively, past anyio's shields), and then raises
    KeyboardInterrupt. A second Ctrl-C raises KeyboardInterrupt at once, even inside blocking work such as loading a
    checkpoint.
    """
    return anyio.run(_cancel_on_ctrl_c, function)


async def _cancel_on_ctrl_c(function: Callable[[], Awaitable[T]]) -> T:
    loop = asyncio.get_running_loop()
    interrupted = False
    with anyio.CancelScope() as scope:

        def on_ctrl_c(signum: int, frame: FrameType | None) -> None:
            nonlocal interrupted
            if interrupted:
                raise KeyboardInterrupt
            interrupted = True
            loop.call_soon_threadsafe(scope.cancel)

        previous = signal.signal(signal.SIGINT, on_ctrl_c)
        try:
            return await function()
        finally:
            signal.signal(signal.SIGINT, previous)
    raise KeyboardInterrupt  # the scope was cancelled by Ctrl-C, and the work has stopped
