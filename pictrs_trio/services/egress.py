"""The SSRF guard's I/O half: an httpx client that connects only where ``rules/egress.py``
allows, for URLs a client supplies (``/image/download?url=``, ``?proxy=``).

    request hook   every request, the first and each redirect: http(s) only, and a host
                   spelled as an address, or named localhost, must be allowed (no lookup,
                   no connection)
    GuardedBackend every new connection: resolve the host once, refuse unless every
                   address is allowed, connect to one of exactly those addresses

The backend sits under httpcore's pool, so the Host header, TLS SNI and certificate checks
keep the URL's host name while the socket goes to the address that was checked: a DNS
answer that changes between check and connect (rebinding) is never used. A refusal is
UrlNotAllowed (400 url-not-allowed), raised before any connection is attempted.

Imported on first use only (``services/outbound.py``): it loads httpx and httpcore.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from ipaddress import ip_address

import httpcore
import httpx
import trio
from loguru import logger

from pictrs_trio.rules import egress
from pictrs_trio.rules.egress import Address, Network
from pictrs_trio.rules.errors import UrlNotAllowed

# httpx's own defaults for a client's pool
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


def _refused(what: str, why: str) -> UrlNotAllowed:
    logger.info("refused to fetch {}: {}", what, why)
    return UrlNotAllowed(f"URL not allowed: {why} (see client.allowed_networks)")


def request_guard(allowed: Sequence[Network]) -> Callable[[httpx.Request], Awaitable[None]]:
    """An httpx request hook refusing a URL judged so by its scheme and literal host."""

    async def guard(request: httpx.Request) -> None:
        url = request.url
        why = egress.url_refusal(url.scheme, url.raw_host.decode("ascii"), allowed)
        if why is not None:
            raise _refused(egress.url_for_log(str(url)), why)

    return guard


HAPPY_EYEBALLS_DELAY = 0.25  # seconds before the next address is tried beside the first


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, connecting only to addresses ``allowed`` or public."""

    def __init__(self, allowed: Sequence[Network]) -> None:
        self._allowed = tuple(allowed)
        self._inner = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Raises UrlNotAllowed, httpcore.ConnectError (no address, none answers),
        httpcore.ConnectTimeout (``timeout`` covers the look-up and the connection)."""
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                addresses = await self._checked_addresses(host, port)
                return await self._connect(addresses, port, local_address, socket_options)
        except trio.TooSlowError:
            raise httpcore.ConnectTimeout(f"connecting to {host} timed out") from None

    async def _checked_addresses(self, host: str, port: int) -> list[Address]:
        why = egress.host_refusal(host, self._allowed)
        if why is not None:
            raise _refused(host, why)
        literal = egress.parse_host(host)  # it parsed in host_refusal
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            addresses = list(dict.fromkeys(ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            why = egress.refusal(address, self._allowed)
            if why is not None:
                # The message does not say which address: it could map an internal network.
                subject = str(address) if literal is not None else f"{host} ({address})"
                logger.info("refused to connect to {}: {}", subject, why)
                shown = f"{address} is {why}" if literal is not None else f"{host} is {why}"
                raise UrlNotAllowed(f"URL not allowed: {shown} (see client.allowed_networks)")
        return addresses

    async def _connect(
        self,
        addresses: list[Address],
        port: int,
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        """The first of the checked addresses to accept, in the resolver's order, each
        started ``HAPPY_EYEBALLS_DELAY`` after the one before unless that one failed sooner
        (RFC 8305, as trio's ``open_tcp_stream``): an address that drops packets costs a
        quarter second, not the whole timeout."""
        options = list(socket_options or ())
        winner: list[httpcore.AsyncNetworkStream] = []
        failures: list[httpcore.ConnectError] = []

        async def attempt(address: Address, failed: trio.Event, done: trio.CancelScope) -> None:
            try:
                stream = await self._inner.connect_tcp(
                    str(address), port, local_address=local_address, socket_options=options
                )
            except httpcore.ConnectError as exc:
                failures.append(exc)
                failed.set()
                return
            if winner:  # another attempt won meanwhile
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                return
            winner.append(stream)
            done.cancel()

        async with trio.open_nursery() as nursery:
            for address in addresses:
                failed = trio.Event()
                nursery.start_soon(attempt, address, failed, nursery.cancel_scope)
                with trio.move_on_after(HAPPY_EYEBALLS_DELAY):
                    await failed.wait()
                if winner:
                    break
        if winner:
            return winner[0]
        raise failures[-1]

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for fetching URLs")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool that connects through ``GuardedBackend``."""

    def __init__(self, allowed: Sequence[Network]) -> None:
        # Certificates as httpx finds them by default (SSL_CERT_FILE, SSL_CERT_DIR, certifi).
        context = httpx.create_ssl_context(trust_env=True)
        super().__init__(verify=context, limits=LIMITS)
        # httpx's transport takes no network backend: its pool is replaced by one like it
        # (same TLS context and limits) that connects through the guard.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=LIMITS.max_connections,
            max_keepalive_connections=LIMITS.max_keepalive_connections,
            keepalive_expiry=LIMITS.keepalive_expiry,
            network_backend=GuardedBackend(allowed),
        )


def guarded_client(
    *, allowed: Sequence[Network], timeout: float, user_agent: str
) -> httpx.AsyncClient:
    """The client for URLs from requests: redirects followed (at most ``MAX_REDIRECTS``,
    each hop checked like the first); no proxy from the environment, since a proxy would
    connect where this process cannot check."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allowed),
        trust_env=False,
        timeout=timeout,
        follow_redirects=True,
        max_redirects=egress.MAX_REDIRECTS,
        headers={"User-Agent": user_agent},
        event_hooks={"request": [request_guard(allowed)]},
    )
