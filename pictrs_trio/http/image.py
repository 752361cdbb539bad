"""Quart routes of /image: details of originals, deletes, and claims of backgrounded
uploads (pict-rs ``src/lib.rs``; docs/api.md). Uploads and reads of stored media are raw
ASGI (``http/upload.py``, ``http/serve.py``)."""

from __future__ import annotations

import uuid

import msgspec
import trio
from quart import Blueprint, Response, request

from pictrs_trio.http.state import app_state, empty, json_response
from pictrs_trio.http.wire import UploadedFile, UploadResponse, encode, wire_details
from pictrs_trio.metrics.names import (
    BACKGROUND_UPLOAD_CLAIM,
    UPLOAD_WAIT,
    UPLOAD_WAIT_DURATION,
    flag,
)
from pictrs_trio.repo.records import UploadOutcome
from pictrs_trio.rules import ids, jobs
from pictrs_trio.rules.errors import (
    AliasNotFound,
    AlreadyClaimed,
    ErrorBody,
    InvalidDeleteToken,
    InvalidQuery,
)
from pictrs_trio.services import blurhash, handlers, proxy
from pictrs_trio.services.fetch import parse_url
from pictrs_trio.services.ingest import ensure_details
from pictrs_trio.services.state import AppState

bp = Blueprint("image", __name__)

CLAIM_WAIT_SECONDS = 10.0  # pict-rs: a claim waits this long, then 204


def _alias_from(raw: str) -> str | None:
    try:
        return ids.parse_alias(raw)
    except ValueError:
        return None


async def _query_alias(*, fetch: bool = False) -> str | None:
    """``?proxy=`` (looked up, never downloaded: unknown is 404 proxy-not-found; with
    ``fetch``, downloaded when new as GET /image/original does), then ``?alias=``,
    pict-rs's order. None: the alias cannot exist."""
    raw_url = request.args.get("proxy")
    if raw_url is not None:
        url = parse_url(raw_url, "proxy")
        if fetch:
            return await proxy.fetch(app_state(), url)
        return await proxy.existing(app_state(), url)
    raw = request.args.get("alias")
    if raw is None:
        raise InvalidQuery("Invalid query: expected alias or proxy")
    return _alias_from(raw)


async def _details(alias: str | None) -> Response:
    state = app_state()
    found = await state.repo.find_original(alias) if alias is not None else None
    if found is None or found.identifier is None:
        raise AliasNotFound("Alias not found")
    details = found.details or await ensure_details(state, found.identifier)
    return json_response(encode(wire_details(details)))


@bp.get("/image/details/original/<alias>")
async def details_path(alias: str) -> Response:
    return await _details(_alias_from(alias))


@bp.get("/image/details/original")
async def details_query() -> Response:
    return await _details(await _query_alias())


class Blurhash(msgspec.Struct, frozen=True, kw_only=True):
    blurhash: str
    msg: str = "ok"


@bp.get("/image/blurhash")
async def blurhash_query() -> Response:
    """pict-rs ``blurhash``: ``?proxy=`` first (downloaded when new), then ``?alias=``."""
    alias = await _query_alias(fetch=True)
    if alias is None:
        raise AliasNotFound("Alias not found")
    value = await blurhash.blurhash_of(app_state(), alias)
    return json_response(encode(Blurhash(blurhash=value)))


@bp.route("/image/delete/<token>/<alias>", methods=["GET", "DELETE"])
async def delete(token: str, alias: str) -> Response:
    state = app_state()
    state.require_writable()
    canonical = _alias_from(alias)
    if canonical is None:
        return empty(204)
    stored_token = await state.repo.delete_token(canonical)
    if stored_token is None:
        return empty(204)  # unknown alias: already deleted
    if not ids.tokens_equal(ids.normalise_token(token), stored_token):
        raise InvalidDeleteToken("Invalid delete token")
    removed = await state.repo.remove_alias(canonical)
    if removed is not None and removed.orphaned_identifiers:
        # The rows went in one transaction with the job that deletes their files.
        state.journal.notify(jobs.CLEANUP, pushed=1)
    return empty(204)


def _upload_id(raw: str | None) -> str:
    if raw is None:
        raise InvalidQuery("Invalid query: upload_id is required")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidQuery("Invalid query: upload_id is not a UUID") from None


async def _wait_outcome(state: AppState, upload_id: str) -> UploadOutcome | None:
    """The upload's outcome once there is one, or None after CLAIM_WAIT_SECONDS (a wait
    of ``pict-rs.upload.wait``, completed when it ended with the outcome). Raises
    AlreadyClaimed when the upload is not (or no longer) there."""
    began, outcome = trio.current_time(), None
    try:
        with trio.move_on_after(CLAIM_WAIT_SECONDS):
            delay = 0.02
            resolved = False
            while True:
                exists, outcome = await state.repo.upload_outcome(upload_id)
                if not exists:
                    raise AlreadyClaimed("Upload was already claimed or does not exist")
                if outcome is not None:
                    return outcome
                if not resolved:  # once: an upload whose job died gets its failure now
                    resolved = True
                    if await handlers.resolve_lost_upload(state, upload_id):
                        continue
                await trio.sleep(delay)
                delay = min(delay * 2, 0.25)
        return None
    finally:
        labels = {"completed": flag(outcome is not None)}
        state.metrics.observe(UPLOAD_WAIT_DURATION, trio.current_time() - began, labels)
        state.metrics.count(UPLOAD_WAIT, labels)


@bp.get("/image/backgrounded/claim")
async def claim() -> Response:
    """200 with the file, 422 with the error, 204 when not done within 10 s."""
    state = app_state()
    upload_id = _upload_id(request.args.get("upload_id"))
    outcome = await _wait_outcome(state, upload_id)
    if outcome is None:
        return empty(204)
    claimed, released = await state.repo.claim_upload(upload_id)
    if released:
        state.journal.notify(jobs.CLEANUP, pushed=1)
    if not claimed:
        raise AlreadyClaimed("Upload was already claimed")
    state.metrics.count(BACKGROUND_UPLOAD_CLAIM)
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
