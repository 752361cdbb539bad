"""Backgrounded uploads: POST /image/backgrounded and GET /image/backgrounded/claim.

The raw bytes are stored unvalidated and an ingest job is queued with the upload record, in
one transaction; the job survives a crash and runs after the restart. A client claims the
outcome later: 200 with the file, 422 with the error, 204 while it is not done yet.
"""

from __future__ import annotations

import uuid
from contextlib import aclosing

import msgspec
import trio
from quart import Blueprint, Response, request

from pictrs_trio.http.image import empty, json_response
from pictrs_trio.http.multipart import iter_file_parts
from pictrs_trio.http.state import app_state
from pictrs_trio.http.wire import UploadedFile, UploadResponse, encode, wire_details
from pictrs_trio.repo.records import PendingUpload
from pictrs_trio.rules import jobs
from pictrs_trio.rules.errors import AlreadyClaimed, ErrorBody, InvalidQuery
from pictrs_trio.rules.query import parse_upload_query
from pictrs_trio.services.ingest import IngestSession, spool
from pictrs_trio.services.state import AppState

bp = Blueprint("backgrounded", __name__)

CLAIM_WAIT_SECONDS = 10.0  # pict-rs: a claim waits this long, then 204


class UploadId(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str


class UploadsResponse(msgspec.Struct, frozen=True, kw_only=True):
    msg: str = "ok"
    uploads: list[UploadId]


async def store_raw(
    state: AppState, session: IngestSession, chunks: object, query: list[tuple[str, str]]
) -> PendingUpload:
    """Spool and store one upload's bytes as they are (validated later, by the job)."""
    limits, _ = parse_upload_query(query)
    raw = session.temp_path()
    await spool(chunks, raw, limits.byte_cap(state.config.media))  # type: ignore[arg-type]
    identifier = await state.store.save_file(
        raw, extension="", content_type="application/octet-stream"
    )
    session.stored(identifier)
    return PendingUpload(upload_id=str(uuid.uuid4()), raw_identifier=identifier, query=query)


async def queue_uploads(
    state: AppState, session: IngestSession, pending: list[PendingUpload]
) -> Response:
    await state.repo.create_uploads(pending)
    for upload in pending:  # the rows own the raw files now
        session.forget_stored(upload.raw_identifier)
    session.disarm()
    state.journal.notify(jobs.INGEST)
    body = UploadsResponse(uploads=[UploadId(upload_id=u.upload_id) for u in pending])
    return json_response(encode(body), 202)


@bp.post("/image/backgrounded")
async def upload_backgrounded() -> Response:
    state = app_state()
    query = list(request.args.items(multi=True))
    parse_upload_query(query)  # a bad query is refused before anything is stored
    parts = iter_file_parts(
        request.headers.get("Content-Type"),
        request.body,
        max_files=state.config.server.max_file_count,
    )
    pending: list[PendingUpload] = []
    async with IngestSession(state) as session, aclosing(parts):
        async for part in parts:
            state.require_writable()
            pending.append(await store_raw(state, session, part.chunks(), query))
        return await queue_uploads(state, session, pending)


def parse_upload_id(raw: str | None) -> str:
    if raw is None:
        raise InvalidQuery("Invalid query: upload_id is required")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidQuery("Invalid query: upload_id is not a UUID") from None


@bp.get("/image/backgrounded/claim")
async def claim() -> Response:
    state = app_state()
    upload_id = parse_upload_id(request.args.get("upload_id"))
    outcome = None
    with trio.move_on_after(CLAIM_WAIT_SECONDS):
        delay = 0.02
        while True:
            exists, outcome = await state.repo.upload_outcome(upload_id)
            if not exists:
                raise AlreadyClaimed("Upload was already claimed or does not exist")
            if outcome is not None:
                break
            await trio.sleep(delay)
            delay = min(delay * 2, 0.25)
    if outcome is None:
        return empty(204)
    if not await state.repo.claim_upload(upload_id):
        raise AlreadyClaimed("Upload was already claimed")
    if outcome.alias is None or outcome.delete_token is None:
        error = ErrorBody(
            msg=outcome.error_msg or "Upload failed", code=outcome.error_code or "unknown-error"
        )
        return json_response(encode(error), 422)
    found = await state.repo.find_original(outcome.alias)
    if found is None or found.details is None:
        raise AlreadyClaimed("The uploaded file was deleted before it was claimed")
    entry = UploadedFile(
        delete_token=outcome.delete_token, details=wire_details(found.details), file=outcome.alias
    )
    return json_response(encode(UploadResponse(files=[entry])))
