"""/internal/* routes, behind ``X-Api-Token`` (pict-rs ``src/middleware/internal.rs``;
docs/api.md)."""

from __future__ import annotations

import hmac

import msgspec
from quart import Blueprint, Response, request

from pictrs_trio.http.state import app_state, empty, json_response
from pictrs_trio.http.wire import encode
from pictrs_trio.rules import ids, jobs
from pictrs_trio.rules.errors import AliasNotFound, InvalidApiToken, InvalidQuery
from pictrs_trio.services import proxy
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


@bp.before_request
async def check_api_key() -> None:
    """Runs before routing inside /internal: without a valid key every path answers 401."""
    expected = app_state().config.server.api_key
    given = request.headers.get("X-Api-Token")
    if not expected or given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise InvalidApiToken("Invalid API Key")


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
        state.journal.notify(jobs.CLEANUP)
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
    for each in aliases:
        await state.repo.remove_alias(each)  # the last one queues the files' removal
    state.journal.notify(jobs.CLEANUP)
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


@bp.route("/<path:_rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
async def unknown(_rest: str) -> Response:
    """Unknown internal paths: 401 without a key (above), empty 404 with one."""
    return empty(404)
