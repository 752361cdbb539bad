"""Streaming stored media to clients: the headers pict-rs sends, single ranges, HEAD."""

from __future__ import annotations

import email.utils
import hashlib
from collections.abc import AsyncIterator

from quart import Response, request

from pictrs_trio.http.ranges import Unsatisfiable, parse_range
from pictrs_trio.repo.records import Details
from pictrs_trio.store import Store

CACHE_CONTROL = "public, max-age=604800, immutable"
# Files up to this size are read whole on the loop thread (a page-cached read costs
# microseconds, a thread hop ~100 µs); larger ones stream from the store.
SMALL_FILE = 1024 * 1024


def etag_for(identifier: str) -> str:
    """A strong validator: identifiers are never reused for other content."""
    return '"' + hashlib.blake2b(identifier.encode(), digest_size=12).hexdigest() + '"'


def media_headers(details: Details, etag: str | None) -> dict[str, str]:
    headers = {
        "Content-Type": details.content_type,
        "Cache-Control": CACHE_CONTROL,
        "Last-Modified": email.utils.format_datetime(details.created_at, usegmt=True),
        "Accept-Ranges": "bytes",
    }
    if etag is not None:
        headers["ETag"] = etag
    return headers


def _empty(status: int, headers: dict[str, str], length: int) -> Response:
    response = Response(b"", status=status, headers=headers)
    response.headers["Content-Length"] = str(length)
    return response


async def serve_stored(
    store: Store,
    identifier: str,
    details: Details,
    *,
    method: str,
    range_header: str | None,
    if_none_match: str | None = None,
    etag: str | None = None,
    status: int = 200,
) -> Response:
    """Answer GET/HEAD for a stored file: 200 (or ``status``), 206, 304 or 416.

    Raises RangeNotSatisfiable for multi-range headers and StoreError/StoreNotFound.
    """
    headers = media_headers(details, etag)
    if etag is not None and if_none_match is not None and status == 200:
        tags = {t.strip() for t in if_none_match.split(",")}
        if etag in tags or "*" in tags:
            return _empty(304, headers, 0)
    # A small, page-cached file is read on the loop thread (microseconds); others stream.
    data = store.read_now(identifier, SMALL_FILE)
    length = len(data) if data is not None else await store.length(identifier)
    try:
        span = parse_range(range_header, length)
    except Unsatisfiable:
        return _empty(416, headers, 0)
    if span is None:
        start, end, code = 0, length, status
    else:
        start, end = span[0], span[1] + 1
        code = 206
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{length}"
    if method == "HEAD":
        return _empty(code, headers, end - start)
    body: bytes | AsyncIterator[bytes]
    body = data[start:end] if data is not None else store.read(identifier, start, end)
    response = Response(body, status=code, headers=headers)
    response.headers["Content-Length"] = str(end - start)
    response.timeout = None  # big files on slow links: no total limit on the body
    return response


async def respond_with_file(store: Store, identifier: str, details: Details) -> Response:
    """``serve_stored`` for the current request (method, Range, If-None-Match)."""
    return await serve_stored(
        store,
        identifier,
        details,
        method=request.method,
        range_header=request.headers.get("Range"),
        if_none_match=request.headers.get("If-None-Match"),
        etag=etag_for(identifier),
    )
