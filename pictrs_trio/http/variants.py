"""Quart routes of variants that serve no file: ``/image/process_backgrounded.{ext}``
and ``/image/details/process.{ext}`` (pict-rs ``src/lib.rs``). ``/image/process.{ext}`` itself
is served by ``http/serve.py``."""

from __future__ import annotations

import contextlib

from quart import Blueprint, Response, request

from pictrs_trio.http.state import app_state, empty, json_response
from pictrs_trio.http.wire import encode, wire_details
from pictrs_trio.rules import ids, jobs
from pictrs_trio.rules.errors import AliasNotFound, InvalidQuery, ProxyNotFound
from pictrs_trio.services import proxy, render
from pictrs_trio.services.fetch import parse_url

bp = Blueprint("variants", __name__)


async def _source(ext: str) -> tuple[str | None, render.VariantRequest]:
    """The alias a process query names (``src``, ``alias``, then ``proxy``, never
    downloaded; None when it cannot exist) and the parsed variant. The source is checked
    before the operations, the operations before a proxy is looked up."""
    state = app_state()
    alias: str | None = None
    url: str | None = None
    for key in ("src", "alias"):
        raw = request.args.get(key)
        if raw is not None:
            with contextlib.suppress(ValueError):  # malformed: the alias cannot exist
                alias = ids.parse_alias(raw)
            break
    else:
        raw_url = request.args.get("proxy")
        if raw_url is None:
            raise InvalidQuery("Invalid query: expected src, alias or proxy")
        url = parse_url(raw_url, "proxy")
    variant = render.parse_request(
        ext, request.args.items(multi=True), allowed=state.config.media.filters
    )
    if url is not None:
        alias = await proxy.existing(state, url)  # unknown: 404 proxy-not-found
    return alias, variant


@bp.get("/image/process_backgrounded.<ext>")
async def process_backgrounded(ext: str) -> Response:
    state = app_state()
    try:
        alias, variant = await _source(ext)
    except ProxyNotFound:
        return empty(404)  # pict-rs: an unknown proxy is an empty 404
    found = await state.repo.find_variant(alias, variant.key) if alias is not None else None
    if alias is None or found is None:
        return empty(400)  # pict-rs: an unknown alias is an empty 400
    if found.identifier is None:
        state.require_writable()
        job = jobs.Generate(alias=alias, ext=ext, query=list(request.args.items(multi=True)))
        await state.journal.push(
            jobs.PROCESS, job, unique_key=f"{found.hash.key().hex()}:{variant.key}"
        )
    return empty(202)


@bp.get("/image/details/process.<ext>")
async def process_details(ext: str) -> Response:
    state = app_state()
    alias, variant = await _source(ext)
    found = await state.repo.find_variant(alias, variant.key) if alias is not None else None
    if found is None or found.identifier is None or found.details is None:
        raise AliasNotFound("Variant not found")
    render.record_access(state, found.hash, variant.key)
    return json_response(encode(wire_details(found.details)))
