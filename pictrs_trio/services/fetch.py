"""Fetching remote media: ``GET /image/download`` and first-time ``?proxy=`` requests.

    url -> parse_url (absolute; http/https, else UrlNotAllowed) -> state.http client GET,
           redirects followed (at most 10)
      -> a scheme or address the SSRF guard refuses, at first or after a redirect:
         UrlNotAllowed (400 url-not-allowed), before connecting (services/egress.py)
      -> non-2xx: DownloadFailed (500 download-file-error)
      -> body streamed in chunks, capped: over the limit is FileTooLarge with status 400
         (pict-rs answers 400 for a download body, 413 for multipart)
      -> ingest (inline) or store_raw (backgrounded)

The body is never held in memory: the chunks go straight to ingest's spool file. Any
transport failure, before or during the body, becomes HttpClientError (500
http-client-error).

Unlike pict-rs, which fetches any URL, only public addresses are reached unless
``client.allowed_networks`` lists more (docs/api.md).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import TYPE_CHECKING

import trio

from pictrs_trio.rules import egress
from pictrs_trio.rules.errors import (
    DownloadFailed,
    DownloadTooLarge,
    HttpClientError,
    InvalidQuery,
    StreamTooSlow,
    UrlNotAllowed,
)
from pictrs_trio.rules.validate import MIB, UploadLimits
from pictrs_trio.rules.variants import Op
from pictrs_trio.services.ingest import Ingested, IngestSession, ingest
from pictrs_trio.services.state import AppState

if TYPE_CHECKING:
    import httpx

BODY_SECONDS = 60.0  # a remote body must arrive within this (pict-rs: stream-too-slow)


def parse_url(raw: str | None, key: str = "url") -> str:
    """The normalised form of an absolute http(s) URL from the query (also the key proxies
    are stored under). Raises InvalidQuery (400) for a missing, relative or unparseable URL,
    as pict-rs's typed ``Url`` query field does, and UrlNotAllowed (400) for another scheme
    (``file:``, ``ftp:``, ...), which the SSRF guard would refuse anyway."""
    if raw is None:
        raise InvalidQuery(f"Invalid query: {key} is required")
    import httpx  # here, not at import time: see outbound.py

    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise InvalidQuery(f"Invalid query: {key} is not a valid URL") from None
    if url.scheme and url.scheme not in egress.SCHEMES:
        raise UrlNotAllowed(f"URL not allowed: only http and https URLs are fetched ({key})")
    if not url.scheme or not url.host:
        raise InvalidQuery(f"Invalid query: {key} must be an absolute http or https URL")
    return str(url)


def _too_large(cap: int) -> DownloadTooLarge:
    return DownloadTooLarge(f"File is larger than {cap // MIB} MB")


async def _capped(
    response: httpx.Response, cap: int, deadline: float
) -> AsyncGenerator[bytes, None]:
    """The body, at most ``cap`` bytes, all of it before ``deadline`` (trio clock)."""
    size = 0
    remote = response.aiter_bytes()
    while True:
        try:
            with trio.fail_at(deadline):  # not around the yield: a scope must not span it
                chunk = await anext(remote)
        except StopAsyncIteration:
            return
        except trio.TooSlowError:
            raise StreamTooSlow("Remote file was not received in time") from None
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        yield chunk


@asynccontextmanager
async def open_remote(
    state: AppState, url: str, *, cap: int
) -> AsyncIterator[AsyncIterator[bytes]]:
    """GET ``url`` and yield its body as chunks of at most ``cap`` bytes in all.

    Raises UrlNotAllowed (the SSRF guard refused the URL or a redirect), DownloadFailed
    (remote status not 2xx), HttpClientError (network failure, also mid-body, or more
    than ten redirects), DownloadTooLarge (body, or its declared length, over ``cap``),
    StreamTooSlow (the body took more than ``BODY_SECONDS``: pict-rs's 60 s).
    """
    client = await state.http.client()
    import httpx  # loaded by then (outbound.py)

    try:
        # The span ends with the answer's head: the body is read by the caller (ingest.spool
        # times it). No traceparent goes out: the remote host is anyone's server.
        with state.tracer.span(__name__, "download", kind="client") as span:
            span.set("http.request.method", "GET")
            span.set("server.address", httpx.URL(url).host)
            response = await client.send(client.build_request("GET", url), stream=True)
            span.set("http.response.status_code", response.status_code)
        try:
            if not response.is_success:
                raise DownloadFailed(
                    f"Failed to download file: remote answered {response.status_code}"
                )
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > cap:
                raise _too_large(cap)  # refused before reading a byte of it
            deadline = trio.current_time() + BODY_SECONDS
            async with aclosing(_capped(response, cap, deadline)) as chunks:
                yield chunks
        finally:
            await response.aclose()
    except httpx.HTTPError as exc:
        # logged with the answer: the URL without its userinfo and query (a signature)
        where = egress.url_for_log(url)
        raise HttpClientError(f"Failed to fetch {where}: {type(exc).__name__}: {exc}") from exc


async def download_and_ingest(
    state: AppState,
    session: IngestSession,
    url: str,
    *,
    limits: UploadLimits,
    operations: Sequence[Op] = (),
) -> Ingested:
    """Fetch ``url`` and ingest it like an upload (within ``session``)."""
    async with open_remote(state, url, cap=limits.byte_cap(state.config.media)) as chunks:
        return await ingest(state, session, chunks, limits=limits, operations=operations)
