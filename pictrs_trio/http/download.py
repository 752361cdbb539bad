"""GET /image/download?url=…&backgrounded=… (pict-rs ``src/lib.rs``; docs/api.md).

Inline: the remote body streams into ingest and the answer is POST /image's 201. With
``backgrounded=true`` the body is stored raw and an ingest job queued, exactly as for
POST /image/backgrounded (202 with an upload id to claim).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from pictrs_trio.http.state import app_state, json_response
from pictrs_trio.http.wire import (
    UploadedFile,
    UploadResponse,
    encode,
    uploads_response,
    wire_details,
)
from pictrs_trio.metrics.names import FILES
from pictrs_trio.rules.errors import InvalidQuery
from pictrs_trio.rules.query import parse_bool, parse_upload_query
from pictrs_trio.services.backgrounded import queue_uploads, store_raw
from pictrs_trio.services.fetch import download_and_ingest, open_remote, parse_url
from pictrs_trio.services.ingest import IngestSession, upload_operations

bp = Blueprint("download", __name__)


def _split_query(pairs: list[tuple[str, str]]) -> tuple[str, bool, list[tuple[str, str]]]:
    """(url, backgrounded, the upload query's limits and operations). Raises InvalidQuery."""
    url: str | None = None
    backgrounded: bool | None = None
    rest: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == "url":
            if url is not None:
                raise InvalidQuery("Invalid query: duplicate field url")
            url = value
        elif key == "backgrounded":
            if backgrounded is not None:
                raise InvalidQuery("Invalid query: duplicate field backgrounded")
            backgrounded = parse_bool(key, value)
        else:
            rest.append((key, value))
    return parse_url(url), bool(backgrounded), rest


@bp.get("/image/download")
async def download() -> Response:
    state = app_state()
    url, backgrounded, query = _split_query(list(request.args.items(multi=True)))
    limits, pairs = parse_upload_query(query)
    operations = upload_operations(state, pairs)  # a bad operation fails before the fetch
    state.require_writable()
    cap = limits.byte_cap(state.config.media)
    state.metrics.count(FILES, {"download": "background" if backgrounded else "inline"})
    async with IngestSession(state) as session:
        if backgrounded:
            async with open_remote(state, url, cap=cap) as chunks:
                pending = await store_raw(state, session, chunks, query)
            upload_ids = await queue_uploads(state, session, [pending])
            return json_response(uploads_response(upload_ids), 202)
        done = await download_and_ingest(state, session, url, limits=limits, operations=operations)
        session.disarm()
    entry = UploadedFile(
        delete_token=done.delete_token, details=wire_details(done.details), file=done.alias
    )
    return json_response(encode(UploadResponse(files=[entry])), 201)
