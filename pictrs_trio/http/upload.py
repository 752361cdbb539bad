"""Upload routes: ``POST /image`` and ``POST /image/backgrounded`` (pict-rs
``src/lib.rs``, ``src/backgrounded.rs``; docs/api.md).

Raw ASGI, so the multipart body streams from ``receive()`` (``Exchange.body()``) through
the parser into each file's spool file: the client is held back by TCP while we store, and
nothing of a body is ever buffered beyond one chunk. A failed or cancelled upload leaves no
file and no row (``IngestSession``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing

from pictrs_trio.http.exchange import Exchange
from pictrs_trio.http.multipart import iter_file_parts
from pictrs_trio.http.wire import (
    UploadedFile,
    UploadResponse,
    encode,
    uploads_response,
    wire_details,
)
from pictrs_trio.metrics import Labels
from pictrs_trio.metrics.names import FILES
from pictrs_trio.repo.records import PendingUpload
from pictrs_trio.rules.query import parse_upload_query
from pictrs_trio.services.backgrounded import queue_uploads, store_raw
from pictrs_trio.services.ingest import IngestSession, ingest, upload_operations
from pictrs_trio.services.state import AppState

MIB = 1024 * 1024
FRAMING = 2 * MIB  # multipart headers, boundaries and ignored fields around the files


def body_cap(state: AppState) -> int:
    """The most an upload request may carry: every file at the size limit, and framing."""
    server, media = state.config.server, state.config.media
    return server.max_file_count * media.max_file_size * MIB + FRAMING


async def upload(state: AppState, exchange: Exchange) -> None:
    await ingest_parts(state, exchange)


def _new_alias(_filename: str | None) -> str | None:
    return None


UPLOAD_INLINE: Labels = {"upload": "inline"}  # pict-rs.files of each way files come in
UPLOAD_BACKGROUND: Labels = {"upload": "background"}


async def ingest_parts(
    state: AppState,
    exchange: Exchange,
    alias_for: Callable[[str | None], str | None] = _new_alias,
    received: Labels = UPLOAD_INLINE,
) -> None:
    """Ingest every file part and answer 201 with them all (POST /image, and
    /internal/import with ``alias_for`` taking a part's file name as its alias; None: a new
    alias). One refused file undoes the others. Each part counts in ``pict-rs.files`` with
    the labels ``received``."""
    limits, pairs = parse_upload_query(exchange.query)
    operations = upload_operations(state, pairs)
    files: list[UploadedFile] = []
    parts = iter_file_parts(
        exchange.header_text(b"content-type"),
        exchange.body(),
        max_files=state.config.server.max_file_count,
    )
    async with IngestSession(state) as session, aclosing(parts):
        async for part in parts:
            state.metrics.count(FILES, received)
            state.require_writable()
            alias = alias_for(part.filename)
            done = await ingest(
                state, session, part.chunks(), limits=limits, operations=operations, alias=alias
            )
            files.append(
                UploadedFile(
                    delete_token=done.delete_token,
                    details=wire_details(done.details),
                    file=done.alias,
                )
            )
        session.disarm()
    await exchange.answer_json(201, encode(UploadResponse(files=files)))


async def upload_backgrounded(state: AppState, exchange: Exchange) -> None:
    query = exchange.query
    parse_upload_query(query)  # a bad query is refused before anything is stored
    parts = iter_file_parts(
        exchange.header_text(b"content-type"),
        exchange.body(),
        max_files=state.config.server.max_file_count,
    )
    pending: list[PendingUpload] = []
    async with IngestSession(state) as session, aclosing(parts):
        async for part in parts:
            state.metrics.count(FILES, UPLOAD_BACKGROUND)
            state.require_writable()
            pending.append(await store_raw(state, session, part.chunks(), query))
        upload_ids = await queue_uploads(state, session, pending)
    await exchange.answer_json(202, uploads_response(upload_ids))


async def wrong_method(state: AppState, exchange: Exchange) -> None:
    await exchange.answer(405, [(b"allow", b"POST"), (b"content-length", b"0")])


UPLOAD = "/image"
BACKGROUNDED = "/image/backgrounded"
ROUTES = {UPLOAD: upload, BACKGROUNDED: upload_backgrounded}
