"""Public /image routes: upload, originals, details, delete."""

from __future__ import annotations

from contextlib import aclosing

from quart import Blueprint, Response, request

from pictrs_trio.http.multipart import iter_file_parts
from pictrs_trio.http.serve import respond_with_file
from pictrs_trio.http.state import app_state
from pictrs_trio.http.wire import UploadedFile, UploadResponse, encode, wire_details
from pictrs_trio.repo.records import Details
from pictrs_trio.rules import ids, jobs
from pictrs_trio.rules.errors import (
    AliasNotFound,
    InvalidDeleteToken,
    InvalidQuery,
)
from pictrs_trio.rules.query import parse_upload_query
from pictrs_trio.services import proxy
from pictrs_trio.services.fetch import parse_url
from pictrs_trio.services.ingest import IngestSession, details_now, ingest, upload_operations
from pictrs_trio.services.state import AppState

bp = Blueprint("image", __name__)


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, content_type="application/json")


def empty(status: int) -> Response:
    return Response(b"", status=status)


@bp.post("/image")
async def upload() -> Response:
    state = app_state()
    limits, pairs = parse_upload_query(request.args.items(multi=True))
    operations = upload_operations(state, pairs)
    files: list[UploadedFile] = []
    parts = iter_file_parts(
        request.headers.get("Content-Type"),
        request.body,
        max_files=state.config.server.max_file_count,
    )
    async with IngestSession(state) as session, aclosing(parts):
        async for part in parts:
            state.require_writable()
            done = await ingest(state, session, part.chunks(), limits=limits, operations=operations)
            files.append(
                UploadedFile(
                    delete_token=done.delete_token,
                    details=wire_details(done.details),
                    file=done.alias,
                )
            )
        session.disarm()
    return json_response(encode(UploadResponse(files=files)), 201)


def _alias_from(raw: str) -> str | None:
    try:
        return ids.parse_alias(raw)
    except ValueError:
        return None


async def _query_alias(*, fetch: bool = False) -> str | None:
    """``?proxy=`` first, then ``?alias=`` (api.md §1.10). None: the alias cannot exist.

    A proxied URL is downloaded on first use only with ``fetch`` (GET of the original);
    otherwise an unknown URL raises ProxyNotFound (404 proxy-not-found).
    """
    raw_url = request.args.get("proxy")
    if raw_url is not None:
        state, url = app_state(), parse_url(raw_url, "proxy")
        return await (proxy.fetch(state, url) if fetch else proxy.existing(state, url))
    raw = request.args.get("alias")
    if raw is None:
        raise InvalidQuery("Invalid query: expected alias or proxy")
    return _alias_from(raw)


async def _original(alias: str | None) -> Response:
    state = app_state()
    hash_ = await state.repo.alias_hash(alias) if alias is not None else None
    if hash_ is None:
        return empty(404)
    identifier = await state.repo.hash_identifier(hash_)
    if identifier is None:
        return empty(404)
    details = await ensure_details(state, identifier)
    return await respond_with_file(state.store, identifier, details)


async def ensure_details(state: AppState, identifier: str) -> Details:
    """Stored details, computed from the file when missing (older records)."""
    details = await state.repo.details(identifier)
    if details is not None:
        return details
    state.require_writable()
    path = await state.store.local_path(identifier)
    if path is None:
        raise AliasNotFound("Details are missing and the file cannot be read locally")
    details = details_now(await state.media.discover(path))
    await state.repo.relate_details(identifier, details)
    return details


@bp.route("/image/original/<alias>", methods=["GET", "HEAD"])
async def original_path(alias: str) -> Response:
    return await _original(_alias_from(alias))


@bp.route("/image/original", methods=["GET", "HEAD"])
async def original_query() -> Response:
    return await _original(await _query_alias(fetch=request.method == "GET"))


async def _details(alias: str | None) -> Response:
    state = app_state()
    hash_ = await state.repo.alias_hash(alias) if alias is not None else None
    identifier = await state.repo.hash_identifier(hash_) if hash_ is not None else None
    if identifier is None:
        raise AliasNotFound("Alias not found")
    details = await ensure_details(state, identifier)
    return json_response(encode(wire_details(details)))


@bp.get("/image/details/original/<alias>")
async def details_path(alias: str) -> Response:
    return await _details(_alias_from(alias))


@bp.get("/image/details/original")
async def details_query() -> Response:
    return await _details(await _query_alias())


@bp.route("/image/delete/<token>/<alias>", methods=["GET", "DELETE"])
async def delete(token: str, alias: str) -> Response:
    state = app_state()
    state.require_writable()
    canonical = _alias_from(alias)
    if canonical is None:
        return empty(204)
    stored_token = await state.repo.delete_token(canonical)
    if stored_token is None:
        if await state.repo.alias_hash(canonical) is None:
            return empty(204)  # unknown alias: already deleted
        raise InvalidDeleteToken("Invalid delete token")
    if not ids.tokens_equal(ids.normalise_token(token), stored_token):
        raise InvalidDeleteToken("Invalid delete token")
    removed = await state.repo.remove_alias(canonical)
    if removed is not None and removed.orphaned_identifiers:
        # The rows went in one transaction with the job that deletes their files.
        state.journal.notify(jobs.CLEANUP)
    return empty(204)
