"""/internal/* routes, behind ``X-Api-Token`` (pict-rs ``src/middleware/internal.rs``;
docs/api.md). ``POST /internal/import`` and ``POST /internal/set_not_found`` read a request
body, so they are raw ASGI (``http/internal_raw.py``) and check the key with
``require_api_key`` themselves."""

from __future__ import annotations

import base64
import binascii
import hmac
from pathlib import Path

import msgspec
from quart import Blueprint, Response, request

from pictrs_trio.http.state import app_state, empty, json_response, wrong_method
from pictrs_trio.http.wire import WireDetails, encode, wire_details
from pictrs_trio.repo.records import Hash
from pictrs_trio.rules import ids, jobs
from pictrs_trio.rules.errors import (
    AliasNotFound,
    InvalidApiToken,
    InvalidQuery,
    RouteNotFound,
)
from pictrs_trio.rules.query import parse_bool, parse_rfc3339_ns, parse_uint
from pictrs_trio.services import proxy, prune
from pictrs_trio.services.fetch import parse_url

bp = Blueprint("internal", __name__, url_prefix="/internal")


class Ok(msgspec.Struct, frozen=True, kw_only=True):
    msg: str = "ok"


class Aliases(msgspec.Struct, frozen=True, kw_only=True):
    aliases: list[str]
    msg: str = "ok"


class Identifier(msgspec.Struct, frozen=True, kw_only=True):
    identifier: str
    msg: str = "ok"


class Exported(msgspec.Struct, frozen=True, kw_only=True):
    """pict-rs answers ``{"msg":"ok"}``; ``export`` (the new folder's name inside
    ``repo.export_path``) is pictrs-trio's addition."""

    export: str
    msg: str = "ok"


class DeadJob(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    queue: str
    kind: str
    attempts: int
    last_error: str | None


class JobsReport(msgspec.Struct, frozen=True, kw_only=True):
    """pictrs-trio only: the journal's state for operators."""

    queues: dict[str, dict[str, int]]
    dead: list[DeadJob]
    msg: str = "ok"


class HashJson(msgspec.Struct, frozen=True, kw_only=True):
    hex: str
    aliases: list[str]
    details: WireDetails | None


class PageJson(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """pict-rs's page (``src/lib.rs`` ``PageJson``): absent slugs are left out, not null."""

    limit: int
    current: str | None = None
    prev: str | None = None
    next: str | None = None
    hashes: list[HashJson]


class Page(msgspec.Struct, frozen=True, kw_only=True):
    msg: str = "ok"
    page: PageJson


DEFAULT_PAGE_LIMIT = 20  # pict-rs's default; it has no maximum
MAX_PAGE_LIMIT = 0x7FFF_FFFF  # what SQLite takes as a LIMIT without surprises


def require_api_key(expected: str | None, given: str | None) -> None:
    """Raises InvalidApiToken unless ``given`` is the configured key (none configured:
    every internal route is off)."""
    if not expected or given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise InvalidApiToken("Invalid API Key")


@bp.before_request
async def check_api_key() -> None:
    """Runs before routing inside /internal: without a valid key every path answers 401."""
    require_api_key(app_state().config.server.api_key, request.headers.get("X-Api-Token"))


def slug_of(hash_: Hash) -> str:
    """pict-rs's page slug: URL-safe base64, padded, of the 39-byte hash key."""
    return base64.urlsafe_b64encode(hash_.key()).decode()


def hash_from_slug(slug: str) -> Hash | None:
    """The hash a slug names; None when it names none (pict-rs: the first page then)."""
    try:
        key = base64.b64decode(slug.encode(), altchars=b"-_", validate=True)
        return Hash.from_key(key)
    except (binascii.Error, ValueError, KeyError, UnicodeEncodeError):
        return None


async def _alias() -> str:
    """``?proxy=`` (looked up, never downloaded; unknown: 404 proxy-not-found), then
    ``?alias=``."""
    raw_url = request.args.get("proxy")
    if raw_url is not None:
        return await proxy.existing(app_state(), parse_url(raw_url, "proxy"))
    raw = request.args.get("alias")
    if raw is None:
        raise InvalidQuery("Invalid query: expected alias or proxy")
    try:
        return ids.parse_alias(raw)
    except ValueError:
        raise AliasNotFound("Alias not found") from None


@bp.delete("/variants")
async def delete_variants() -> Response:
    state = app_state()
    state.require_writable()
    await state.journal.push(
        jobs.CLEANUP, jobs.RemoveAllVariants(), unique_key="remove-all-variants"
    )
    return empty(204)


@bp.post("/delete")
async def delete_alias() -> Response:
    state = app_state()
    state.require_writable()
    alias = await _alias()
    if await state.repo.delete_token(alias) is None:
        return empty(404)
    removed = await state.repo.remove_alias(alias)
    if removed is not None and removed.orphaned_identifiers:
        state.journal.notify(jobs.CLEANUP, pushed=1)
    return json_response(encode(Ok()))


@bp.post("/purge")
async def purge() -> Response:
    state = app_state()
    state.require_writable()
    alias = await _alias()
    hash_ = await state.repo.alias_hash(alias)
    if hash_ is None:
        raise AliasNotFound("Alias not found")
    aliases = await state.repo.aliases_for_hash(hash_)
    queued = 0
    for each in aliases:
        removed = await state.repo.remove_alias(each)  # the last one queues the files' removal
        queued += removed is not None and bool(removed.orphaned_identifiers)
    state.journal.notify(jobs.CLEANUP, pushed=queued)
    return json_response(encode(Aliases(aliases=aliases)))


@bp.get("/aliases")
async def aliases() -> Response:
    state = app_state()
    hash_ = await state.repo.alias_hash(await _alias())
    found = await state.repo.aliases_for_hash(hash_) if hash_ is not None else []
    return json_response(encode(Aliases(aliases=found)))


@bp.get("/identifier")
async def identifier() -> Response:
    state = app_state()
    found = await state.repo.find_original(await _alias())
    if found is None or found.identifier is None:
        raise AliasNotFound("Alias not found")
    return json_response(encode(Identifier(identifier=found.identifier)))


@bp.get("/jobs")
async def jobs_report() -> Response:
    state = app_state()
    stats = await state.journal.stats()
    dead = await state.journal.dead_jobs(100)
    report = JobsReport(
        queues={q: {str(s): n for s, n in counts.items()} for q, counts in stats.items()},
        dead=[
            DeadJob(
                id=j.id, queue=j.queue, kind=j.kind, attempts=j.attempts, last_error=j.last_error
            )
            for j in dead
        ],
    )
    return json_response(encode(report))


@bp.get("/hashes")
async def hashes() -> Response:
    """A page of stored files, newest first (pict-rs ``page``). ``timestamp`` (RFC 3339)
    wins over ``slug``; the page then starts at the newest file created strictly before
    it (an empty page when none is that old, where pict-rs's postgres repo answers the
    first page: see docs/api.md)."""
    state = app_state()
    args = request.args
    raw_limit = args.get("limit")
    limit = (
        DEFAULT_PAGE_LIMIT
        if raw_limit is None
        else parse_uint("limit", raw_limit, maximum=MAX_PAGE_LIMIT)
    )
    raw_time, raw_slug = args.get("timestamp"), args.get("slug")
    if raw_time is not None:
        page = await state.repo.hash_page(
            before_ns=parse_rfc3339_ns("timestamp", raw_time), limit=limit
        )
    else:
        start = None if raw_slug is None else hash_from_slug(raw_slug)
        page = await state.repo.hash_page(start=start, limit=limit)
    body = PageJson(
        limit=page.limit,
        current=slug_of(page.hashes[0].hash) if page.hashes else None,
        prev=None if page.prev is None else slug_of(page.prev),
        next=None if page.next is None else slug_of(page.next),
        hashes=[
            HashJson(
                hex=entry.hash.key().hex(),
                aliases=entry.aliases,
                details=None if entry.details is None else wire_details(entry.details),
            )
            for entry in page.hashes
        ],
    )
    return json_response(encode(Page(page=body)))


@bp.post("/prune_missing")
async def prune_missing() -> Response:
    """Start the walk once (again with ``force=true``); answers the progress as it was,
    without a ``msg`` key, as pict-rs does."""
    raw = request.args.get("force")
    force = False if raw is None else parse_bool("force", raw)
    return json_response(encode(await prune.start(app_state(), force=force)))


@bp.get("/prune_missing")
async def prune_missing_progress() -> Response:
    """pictrs-trio only: the progress, starting nothing."""
    return json_response(encode(await prune.progress(app_state())))


@bp.post("/export")
async def export() -> Response:
    """A consistent copy of the database in ``repo.export_path`` (pict-rs: sled only). Not
    refused in read-only mode: it writes nothing into the repo."""
    state = app_state()
    folder = await state.repo.export(Path(state.config.repo.export_path))
    return json_response(encode(Exported(export=folder.name)), status=201)


@bp.route("/<path:_rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
async def unknown(_rest: str) -> Response:
    """Unknown internal paths: 401 without a key (above), 404 with one. A known path asked
    with another method lands here too (this rule takes every method): 405 with Allow, as
    on every other path (pict-rs: actix's 405 of a resource)."""
    refused = wrong_method(request.path)
    if refused.valid_methods:
        raise refused
    raise RouteNotFound("Not found")
