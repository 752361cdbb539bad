"""The one outbound HTTP client (downloads, proxies), built on first use.

httpx and its dependencies cost the server process ~5 MB, and many servers never download or
proxy anything, so nothing of httpx is imported until the first download or proxy request
(``download.parse_url`` imports it then, once, on the event loop: ~0.2 s); the client and
its TLS context are built in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from pictrs_trio.rules.errors import HttpClientError

if TYPE_CHECKING:
    import httpx


class Outbound:
    """Holds the lazily made ``httpx.AsyncClient``; ``aclose`` at shutdown."""

    def __init__(self, *, timeout: float, user_agent: Callable[[], str]) -> None:
        self._timeout = timeout
        self._user_agent = user_agent
        self._client: httpx.AsyncClient | None = None
        self._lock = trio.Lock()
        self._closed = False

    async def client(self) -> httpx.AsyncClient:
        """The client, made on first use in a thread: importing httpx and building its TLS
        context take ~0.3 s, which must not stall the event loop."""
        async with self._lock:
            if self._closed:
                raise HttpClientError("Server is shutting down")
            if self._client is None:
                self._client = await trio.to_thread.run_sync(self._build)
            return self._client

    def _build(self) -> httpx.AsyncClient:
        import httpx

        # pict-rs builds its client without a timeout; we apply ``client.timeout`` (per
        # connect, read, write and pool wait).
        return httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=True,
            headers={"User-Agent": self._user_agent()},
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            async with self._lock:
                self._closed = True
                if self._client is not None:
                    await self._client.aclose()
                    self._client = None

    async def __aenter__(self) -> Outbound:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
