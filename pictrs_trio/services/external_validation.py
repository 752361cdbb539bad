"""``media.external_validation``: a URL the operator names, which must accept each file
before it is kept (pict-rs ``src/ingest.rs``).

Once an upload is processed, the bytes that would be stored are POSTed to the URL with the
media's Content-Type. A 2xx answer accepts; any other answer refuses the file with
FailedExternalValidation (400 failed-external-validation); no answer within
``media.external_validation_timeout`` seconds, or no connection, refuses it with
ExternalValidationUnavailable (same code, status 500). Every ingest goes through here:
uploads, backgrounded uploads (in their job), downloads, proxies and ``/internal/import``,
in ``server.danger_dummy_mode`` too, as in pict-rs, where they all run ``ingest::ingest``.

pict-rs asks the validator after storing the file; here it is asked before, from the
temporary file, so a refusal has nothing in the store or the repo to undo. The URL is the
operator's, so it is fetched with the unguarded client (``services/outbound.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import trio
from loguru import logger

from pictrs_trio.metrics.names import INGEST_EXTERNAL_VALIDATION
from pictrs_trio.rules import egress
from pictrs_trio.rules.errors import ExternalValidationUnavailable, FailedExternalValidation
from pictrs_trio.services.state import AppState
from pictrs_trio.services.tracing import Span

CHUNK = 64 * 1024


class _FileBody:
    """A request body read from a file as it is sent; each iteration reads it afresh, so
    httpx can send it again after a 307/308 redirect."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async with await trio.open_file(self._path, "rb") as f:
            while chunk := await f.read(CHUNK):
                yield chunk


async def validate_externally(state: AppState, path: Path, *, size: int, content_type: str) -> None:
    """POST the file at ``path`` to ``media.external_validation``, if set. Raises
    FailedExternalValidation (refused) or ExternalValidationUnavailable (no answer in
    time, no connection). Timed in ``pict-rs.ingest.external-validation``, ``complete``
    when the validator answered (whatever it said)."""
    media = state.config.media
    url = media.external_validation
    if url is None:
        return
    # A client span whose traceparent goes with the request: the validator may join the trace.
    with state.tracer.span(__name__, "ingest.external_validation", kind="client") as span:
        span.set("http.request.method", "POST")
        span.set("server.address", urlsplit(url).hostname or "")
        await _post(state, url, path, size=size, content_type=content_type, span=span)


async def _post(
    state: AppState, url: str, path: Path, *, size: int, content_type: str, span: Span
) -> None:
    media = state.config.media
    client = await state.http.operator_client()
    import httpx  # loaded with the client (outbound.py)

    headers = {"Content-Type": content_type, "Content-Length": str(size)}
    span.inject(headers)
    try:
        # pict-rs gives the whole request this timeout; it replaces the client's own.
        with (
            state.metrics.timed(INGEST_EXTERNAL_VALIDATION),
            trio.fail_after(media.external_validation_timeout),
        ):
            request = client.build_request(
                "POST", url, content=_FileBody(path), headers=headers, timeout=None
            )
            response = await client.send(request, stream=True)
            await response.aclose()  # only the status counts; the body is not read
    except trio.TooSlowError:
        logger.warning("external validation at {} did not answer in time", egress.url_for_log(url))
        raise ExternalValidationUnavailable(
            f"External validation did not answer within {media.external_validation_timeout:g} s"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        logger.warning("external validation at {} failed: {!r}", egress.url_for_log(url), exc)
        raise ExternalValidationUnavailable(
            f"External validation could not be reached: {type(exc).__name__}"
        ) from exc
    span.set("http.response.status_code", response.status_code)
    if not response.is_success:
        logger.bind(status=response.status_code).info("external validation refused an upload")
        raise FailedExternalValidation(
            f"Failed external validation: the validator answered {response.status_code}"
        )
