"""The outbound HTTP clients, built on first use.

Two clients, for two kinds of URL:

- ``client()``: URLs a request names (``/image/download?url=``, ``?proxy=``), through the
  SSRF guard (``services/egress.py``, ``rules/egress.py``): only public addresses, or those
  in ``client.allowed_networks``;
- ``operator_client()``: URLs from the configuration (``media.external_validation``), which
  the operator chose, so they may be anywhere (a validator on localhost is usual).

httpx and its dependencies cost the server process ~5 MB, and many servers never download,
proxy or validate anything, so nothing of httpx is imported until the first such request
(``fetch.parse_url`` imports it then, once, on the event loop: ~0.2 s; a first external
validation imports it in the thread that builds its client); each client and its TLS context
are built in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import trio

from pictrs_trio.rules.egress import MAX_REDIRECTS, Network
from pictrs_trio.rules.errors import HttpClientError

if TYPE_CHECKING:
    import httpx

Kind = Literal["guarded", "operator"]


class Outbound:
    """Holds the lazily made ``httpx.AsyncClient``s; ``aclose`` at shutdown."""

    def __init__(
        self,
        *,
        timeout: float,
        user_agent: Callable[[], str],
        allowed_networks: Sequence[Network] = (),
    ) -> None:
        self._timeout = timeout
        self._user_agent = user_agent
        self._allowed = tuple(allowed_networks)
        self._clients: dict[Kind, httpx.AsyncClient] = {}
        self._lock = trio.Lock()
        self._closed = False

    async def client(self) -> httpx.AsyncClient:
        """The guarded client, for URLs from requests."""
        return await self._get("guarded")

    async def operator_client(self) -> httpx.AsyncClient:
        """The unguarded client, for URLs from the configuration."""
        return await self._get("operator")

    async def _get(self, kind: Kind) -> httpx.AsyncClient:
        """Made on first use in a thread: importing httpx and building its TLS context take
        ~0.3 s, which must not stall the event loop."""
        async with self._lock:
            if self._closed:
                raise HttpClientError("Server is shutting down")
            client = self._clients.get(kind)
            if client is None:
                client = await trio.to_thread.run_sync(self._build, kind)
                self._clients[kind] = client
            return client

    def _build(self, kind: Kind) -> httpx.AsyncClient:
        # pict-rs builds its client without a timeout; we apply ``client.timeout`` (per
        # connect, read, write and pool wait).
        if kind == "guarded":
            from pictrs_trio.services.egress import guarded_client

            return guarded_client(
                allowed=self._allowed, timeout=self._timeout, user_agent=self._user_agent()
            )
        import httpx

        return httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": self._user_agent()},
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            async with self._lock:
                self._closed = True
                clients, self._clients = list(self._clients.values()), {}
                for client in clients:
                    await client.aclose()

    async def __aenter__(self) -> Outbound:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
