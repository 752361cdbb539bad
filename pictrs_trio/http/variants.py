"""Variant routes: /image/process.{ext}, /image/process_backgrounded.{ext},
/image/details/process.{ext}."""

from __future__ import annotations

import contextlib

from quart import Blueprint, Response, request

from pictrs_trio.http.image import empty, json_response
from pictrs_trio.http.serve import respond_with_file
from pictrs_trio.http.state import app_state
from pictrs_trio.http.wire import encode, wire_details
from pictrs_trio.repo.records import Details
from pictrs_trio.rules import ids, jobs
from pictrs_trio.rules.errors import (
    AliasNotFound,
    InvalidQuery,
    ProxyNotFound,
    StoreNotFound,
)
from pictrs_trio.services import proxy, render
from pictrs_trio.services.fetch import parse_url

bp = Blueprint("process", __name__)


class _Source:
    """The source a process query names: ``src``, then ``alias``, then ``proxy`` (api.md
    §1.10). Parsed before the operations, resolved after them, so a bad query never
    downloads anything."""

    def __init__(self) -> None:
        self.alias: str | None = None
        self.url: str | None = None
        for key in ("src", "alias"):
            raw = request.args.get(key)
            if raw is not None:
                with contextlib.suppress(ValueError):  # malformed: the alias cannot exist
                    self.alias = ids.parse_alias(raw)
                return
        raw_url = request.args.get("proxy")
        if raw_url is None:
            raise InvalidQuery("Invalid query: expected src, alias or proxy")
        self.url = parse_url(raw_url, "proxy")

    async def resolve(self, *, fetch: bool = False) -> str | None:
        """The alias (None when it cannot exist). A proxy URL is downloaded on first use only
        with ``fetch``; otherwise an unknown one raises ProxyNotFound."""
        if self.url is None:
            return self.alias
        state = app_state()
        return await (proxy.fetch(state, self.url) if fetch else proxy.existing(state, self.url))


def _parse(ext: str) -> render.VariantRequest:
    state = app_state()
    return render.parse_request(
        ext, request.args.items(multi=True), allowed=state.config.media.filters
    )


@bp.route("/image/process.<ext>", methods=["GET", "HEAD"])
async def process_variant(ext: str) -> Response:
    state = app_state()
    source = _Source()
    variant = _parse(ext)
    try:
        alias = await source.resolve(fetch=request.method == "GET")
    except ProxyNotFound:
        return empty(404)  # HEAD with an unknown proxy: empty 404 (api.md §2.10)
    if alias is None:
        return empty(404)
    if request.method == "HEAD":
        # HEAD never renders: only an existing variant is described.
        found = await state.repo.find_variant(alias, variant.key)
        if found is None or found.identifier is None or found.details is None:
            return empty(404)
        render.record_access(state, found.hash, variant.key)
        identifier, details = found.identifier, found.details
    else:
        try:
            rendered = await render.find_or_render(state, alias, variant)
        except AliasNotFound:
            return empty(404)
        identifier, details = rendered.identifier, rendered.details
    try:
        return await _serve(identifier, details)
    except StoreNotFound:
        if request.method == "HEAD":
            return empty(404)
        # The row outlived its file (variants are not fsynced): render it again, once.
        found = await state.repo.find_variant(alias, variant.key)
        if found is not None:
            await state.repo.forget_variant(found.hash, variant.key, identifier)
        rendered = await render.find_or_render(state, alias, variant)
        return await _serve(rendered.identifier, rendered.details)


async def _serve(identifier: str, details: Details) -> Response:
    return await respond_with_file(app_state().store, identifier, details)


@bp.get("/image/process_backgrounded.<ext>")
async def process_backgrounded(ext: str) -> Response:
    state = app_state()
    source = _Source()
    variant = _parse(ext)
    try:
        alias = await source.resolve()
    except ProxyNotFound:
        return empty(404)  # api.md §2.11: an unknown proxy is an empty 404
    if alias is None:
        return empty(400)
    found = await state.repo.find_variant(alias, variant.key)
    if found is None:
        return empty(400)
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
    source = _Source()
    variant = _parse(ext)
    alias = await source.resolve()  # unknown proxy: 404 proxy-not-found
    found = await state.repo.find_variant(alias, variant.key) if alias is not None else None
    if found is None or found.identifier is None or found.details is None:
        raise AliasNotFound("Variant not found")
    render.record_access(state, found.hash, variant.key)
    return json_response(encode(wire_details(found.details)))
