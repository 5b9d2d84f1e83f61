"""Connection pooling for remote backends: several small httpx pools instead of one large one."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

__all__ = ["ShardedClient"]

DEFAULT_SHARDS = 8


class ShardedClient:
    """httpx clients that share out the requests in flight, each request going to the least busy one.

    httpcore 1.x rescans every connection and queued request of a pool on each state change, and a request that
    loses the race for an idle connection goes round again; one pool with dozens of busy connections therefore costs
    several times more per request than a few small pools (see benchmarks/remote_client_overhead.py). Sequential
    traffic stays on the first client and reuses one connection. Clients are made when first needed and share one
    TLS context.
    """

    def __init__(self, timeout: httpx.Timeout, shards: int = DEFAULT_SHARDS) -> None:
        self._timeout = timeout
        self._clients: list[httpx.AsyncClient | None] = [None] * shards
        self._in_flight = [0] * shards
        self._tls: ssl.SSLContext | None = None

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one request, counted as busy until the request (and its body) is done."""
        index = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            yield self._client(index)
        finally:
            self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            if client is not None:
                await client.aclose()

    def _client(self, index: int) -> httpx.AsyncClient:
        client = self._clients[index]
        if client is None:
            if self._tls is None:
                self._tls = httpx.create_ssl_context()
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
            client = self._clients[index] = httpx.AsyncClient(timeout=self._timeout, limits=limits, verify=self._tls)
        return client
