"""The one outbound HTTP client (downloads, proxies), built on first use.

httpx and its dependencies cost the server process ~5 MB, and many servers never download or
proxy anything, so nothing of httpx is imported until the first outbound request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import httpx


class Outbound:
    """Holds the lazily made ``httpx.AsyncClient``; ``aclose`` at shutdown."""

    def __init__(self, *, timeout: float, user_agent: Callable[[], str]) -> None:
        self._timeout = timeout
        self._user_agent = user_agent
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            # pict-rs builds its client without a timeout; we apply ``client.timeout`` (per
            # connect, read, write and pool wait).
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=True,
                headers={"User-Agent": self._user_agent()},
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            with trio.CancelScope(shield=True):
                await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> Outbound:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
