"""Client-side limits for remote servers: requests per minute and requests in flight."""

from __future__ import annotations

from collections import deque

import anyio

__all__ = ["RequestRateLimiter"]


class RequestRateLimiter:
    """Lets at most `limit` requests start in any window of `period` seconds (a sliding log).

    Waiters are served in arrival order; a waiting task can be cancelled at any time without using up a slot.
    """

    def __init__(self, limit: int, period: float = 60.0) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("a rate limit needs limit >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._starts: deque[float] = deque()
        self._lock = anyio.Lock()

    async def acquire(self) -> None:
        """Wait until one more request may start, and count it."""
        async with self._lock:
            while True:
                now = anyio.current_time()
                while self._starts and now - self._starts[0] >= self.period:
                    self._starts.popleft()
                if len(self._starts) < self.limit:
                    self._starts.append(now)
                    return
                await anyio.sleep(self._starts[0] + self.period - now)
