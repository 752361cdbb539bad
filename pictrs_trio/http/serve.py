"""The read router: GET and HEAD of stored media, on the one decision in ``http/read.py``.

    /image/original/{alias}                       the original
    /image/original?proxy=|alias=                 the same, by query; a new proxy URL is
                                                  downloaded on GET
    /image/process.{ext}?src=|alias=|proxy=&ops   a variant, rendered on a GET
                                                  when missing (``services.render``)

Most traffic of a media server is these reads of things already stored, so they are raw ASGI
(no Quart): one indexed SQLite read on the event loop thread, one read of a small
page-cached file, and a head and body that go out back to back. pict-rs answers a missing
file with an empty 404, or, once ``POST /internal/set_not_found`` named one, a GET with the
not-found image (its original, or the asked variant of it) and status 404; a ranged GET of
it answers 206/416 as any file's does, and HEAD never uses it (pict-rs ``src/lib.rs``
``do_serve``, ``process``, ``ranged_file_resp``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import msgspec

from pictrs_trio.http.exchange import Exchange
from pictrs_trio.http.read import ReadAnswer, ReadRequest, Stored, decide, probable_span
from pictrs_trio.repo.records import Details
from pictrs_trio.rules import ids
from pictrs_trio.rules.errors import AliasNotFound, InvalidQuery, StoreNotFound
from pictrs_trio.services import proxy, render
from pictrs_trio.services.fetch import parse_url
from pictrs_trio.services.ingest import ensure_details
from pictrs_trio.services.state import AppState

# Files up to this size are read whole on the loop thread (a page-cached read costs
# microseconds, a thread hop ~100 µs); larger ones stream from the store.
SMALL_FILE = 1024 * 1024

ORIGINAL_PATH = "/image/original/"
ORIGINAL_QUERY = "/image/original"
PROCESS = "/image/process."


def route(path: str) -> str | None:
    """Which read ``path`` is (``original``, ``original?``, ``process``), or None when it is
    not a path of stored media."""
    if path.startswith(ORIGINAL_PATH) and "/" not in path[len(ORIGINAL_PATH) :]:
        return "original"
    if path == ORIGINAL_QUERY:
        return "original?"
    if path.startswith(PROCESS) and "/" not in path[len(PROCESS) :]:
        return "process"
    return None


async def serve_read(state: AppState, exchange: Exchange, which: str) -> None:
    if exchange.method not in ("GET", "HEAD"):
        await exchange.answer(405, [(b"allow", b"GET, HEAD"), (b"content-length", b"0")])
    elif which == "original":
        alias = _alias(exchange.path[len(ORIGINAL_PATH) :])
        await _original(state, exchange, alias)
    elif which == "original?":
        await _original(state, exchange, await _query_alias(state, exchange))
    else:
        await _variant(state, exchange, exchange.path[len(PROCESS) :])


def _alias(raw: str) -> str | None:
    """The canonical alias, or None when ``raw`` cannot be one (it then does not exist)."""
    try:
        return ids.parse_alias(raw)
    except ValueError:
        return None


def _request(exchange: Exchange) -> ReadRequest:
    header = exchange.header
    return ReadRequest(
        method=exchange.method,
        range=header(b"range"),
        if_match=header(b"if-match"),
        if_none_match=header(b"if-none-match"),
        if_modified_since=header(b"if-modified-since"),
        if_unmodified_since=header(b"if-unmodified-since"),
        if_range=header(b"if-range"),
    )


async def serve_stored(
    state: AppState,
    exchange: Exchange,
    identifier: str,
    details: Details,
    *,
    not_found: bool = False,
) -> None:
    """Answer the request with the stored file; ``not_found``: it is the not-found image,
    served in place of an unknown alias with 404 where a file gets 200, and conditional
    headers are ignored (they name the unknown alias's file, not this one). A store with a
    public URL for it gets a 303 redirect there instead. Raises
    StoreNotFound (before anything is sent) when the file is gone, RangeNotSatisfiable
    for a multi-range request."""
    store = state.store
    public = store.public_url(identifier)
    if public is not None:
        # Object storage with a public endpoint: the client fetches it there (pict-rs answers
        # 303 See Other, GET and HEAD alike, the not-found image too; ``do_serve``).
        await exchange.answer(303, [(b"location", public.encode()), (b"content-length", b"0")])
        return
    request = _request(exchange)
    if not_found:
        request = ReadRequest(method=request.method, range=request.range)

    def answer_for(length: int) -> ReadAnswer:
        answer = decide(Stored(identifier=identifier, details=details, length=length), request)
        if not_found and answer.status == 200:
            answer = msgspec.structs.replace(answer, status=404)
        return answer

    data = store.read_now(identifier, SMALL_FILE)
    if data is not None:
        answer = answer_for(len(data))
        body = b"" if answer.span is None else data[answer.span[0] : answer.span[1]]
        await exchange.answer(answer.status, answer.headers, body)
        return
    guess = probable_span(request)
    if guess is None:
        answer = answer_for(await store.length(identifier))
    else:
        # The length and the bytes in one request (object storage: one GET, not HEAD+GET).
        async with store.open_read(identifier, *guess) as reading:
            answer = answer_for(reading.length)
            end = reading.length if guess[1] is None else min(guess[1], reading.length)
            if answer.span == (guess[0], end):
                await _stream(exchange, answer, reading.chunks)
                return
    if answer.span is None:
        await exchange.answer(answer.status, answer.headers)
        return
    async with aclosing(store.read(identifier, *answer.span)) as chunks:
        await _stream(exchange, answer, chunks)


async def _stream(exchange: Exchange, answer: ReadAnswer, chunks: AsyncIterator[bytes]) -> None:
    first = await anext(chunks)  # a missing file fails here, before the head goes out
    await exchange.stream(answer.status, answer.headers, first, chunks)


async def _query_alias(state: AppState, exchange: Exchange) -> str | None:
    """``?proxy=`` first, then ``?alias=`` (pict-rs's order). A GET downloads a proxy URL seen
    for the first time; a HEAD of one raises ProxyNotFound (404 proxy-not-found)."""
    raw_url = exchange.arg("proxy")
    if raw_url is not None:
        url = parse_url(raw_url, "proxy")
        if exchange.method == "GET":
            return await proxy.fetch(state, url)
        return await proxy.existing(state, url)
    raw = exchange.arg("alias")
    if raw is None:
        raise InvalidQuery("Invalid query: expected alias or proxy")
    return _alias(raw)


async def _original(state: AppState, exchange: Exchange, alias: str | None) -> None:
    # A point read on the loop thread: microseconds in WAL, where a thread hop is ~100 µs.
    found = state.repo.find_original_now(alias) if alias is not None else None
    if found is None and exchange.method == "GET":
        await _not_found_original(state, exchange)
        return
    if found is None or found.identifier is None:
        await exchange.answer_empty(404)
        return
    details = found.details or await ensure_details(state, found.identifier)
    try:
        await serve_stored(state, exchange, found.identifier, details)
    except StoreNotFound:
        await exchange.answer_empty(404)  # the row outlived its file (a lost disk, say)


async def _not_found_original(state: AppState, exchange: Exchange) -> None:
    """The not-found image with 404, or an empty 404 when none is set (or its file is
    gone)."""
    fallback = state.repo.not_found_now()
    found = fallback[1] if fallback is not None else None
    if found is None or found.identifier is None:
        await exchange.answer_empty(404)
        return
    details = found.details or await ensure_details(state, found.identifier)
    try:
        await serve_stored(state, exchange, found.identifier, details, not_found=True)
    except StoreNotFound:
        await exchange.answer_empty(404)


async def _not_found_variant(
    state: AppState, exchange: Exchange, variant: render.VariantRequest
) -> None:
    """The asked variant of the not-found image (rendered on demand) with 404, or an
    empty 404 when none is set."""
    fallback = state.repo.not_found_now()
    if fallback is None:
        await exchange.answer_empty(404)
        return
    try:
        rendered = await render.find_or_render(state, fallback[0], variant)
        await serve_stored(state, exchange, rendered.identifier, rendered.details, not_found=True)
    except (AliasNotFound, StoreNotFound):
        await exchange.answer_empty(404)  # removed meanwhile; or its file is gone


def _variant_source(exchange: Exchange) -> tuple[str | None, str | None]:
    """(alias, proxy URL) a process query names: ``src``, then ``alias``, then ``proxy``
    (pict-rs's order); the alias is None when it cannot exist. Raises InvalidQuery."""
    for key in ("src", "alias"):
        raw = exchange.arg(key)
        if raw is not None:
            return _alias(raw), None
    raw_url = exchange.arg("proxy")
    if raw_url is None:
        raise InvalidQuery("Invalid query: expected src, alias or proxy")
    return None, parse_url(raw_url, "proxy")


async def _variant(state: AppState, exchange: Exchange, ext: str) -> None:
    # Everything is parsed before the source is resolved: a bad query downloads nothing.
    alias, url = _variant_source(exchange)
    variant = render.parse_request(ext, exchange.query, allowed=state.config.media.filters)
    if url is not None:
        # A GET downloads a URL seen for the first time; a HEAD of one is an empty 404.
        get = exchange.method == "GET"
        alias = await (proxy.fetch(state, url) if get else proxy.lookup(state, url))
    if alias is None:
        if exchange.method == "GET":
            await _not_found_variant(state, exchange, variant)
        else:
            await exchange.answer_empty(404)
        return
    if exchange.method == "HEAD":
        # HEAD never renders: only an existing variant is described.
        ready = render.existing(state, alias, variant.key)
        if ready is None:
            await exchange.answer_empty(404)
            return
        try:
            await serve_stored(state, exchange, ready.identifier, ready.details)
        except StoreNotFound:
            await exchange.answer_empty(404)
        return
    try:
        rendered = await render.find_or_render(state, alias, variant)
        try:
            await serve_stored(state, exchange, rendered.identifier, rendered.details)
            return
        except StoreNotFound:
            # The row outlived its file (variants are not fsynced): render it again, once.
            await render.forget(state, alias, variant, rendered.identifier)
        rendered = await render.find_or_render(state, alias, variant)
        await serve_stored(state, exchange, rendered.identifier, rendered.details)
    except AliasNotFound:
        await _not_found_variant(state, exchange, variant)
