"""The /internal routes that read a request body, raw ASGI like the uploads
(``http/upload.py``): the key is checked before a byte of the body is read.

    POST /internal/import         multipart like POST /image; each file's name is its alias
    POST /internal/set_not_found  {"alias": ...} (or ``?alias=``): the not-found image
"""

from __future__ import annotations

import msgspec

from pictrs_trio.http import upload
from pictrs_trio.http.exchange import Exchange
from pictrs_trio.http.internal import Ok, require_api_key
from pictrs_trio.http.wire import encode
from pictrs_trio.rules import ids
from pictrs_trio.rules.errors import (
    AliasNotFound,
    InvalidJson,
    ProxyNotAllowed,
    UploadError,
)
from pictrs_trio.services.state import AppState

JSON_CAP = 64 * 1024  # a set_not_found body is one alias
MAX_ALIAS = 255  # bytes: a file name's limit on common file systems


class AliasBody(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """pict-rs's ``AliasQuery`` as a JSON body: ``{"alias":…}`` or ``{"proxy":…}``."""

    alias: str | None = None
    proxy: str | None = None


_alias_body = msgspec.json.Decoder(AliasBody)


def _check_key(state: AppState, exchange: Exchange) -> None:
    require_api_key(state.config.server.api_key, exchange.header_text(b"x-api-token"))


def import_alias(filename: str | None) -> str:
    """The alias an imported file's name asks for, in canonical form (pict-rs
    ``Alias::from_existing``, which takes any name). Names that could not be served back
    or would be unsafe in a path or a log line are refused, and so is a name without an
    extension: every alias this server makes has one. Raises UploadError (400)."""
    if not filename:
        raise UploadError("Imported file has no file name to use as its alias")
    try:
        alias = ids.parse_alias(filename)
    except ValueError:
        raise UploadError("Imported file name is not a valid alias") from None
    _name, dot, extension = alias.partition(".")
    if not dot or not extension or len(alias.encode()) > MAX_ALIAS or alias != alias.strip():
        raise UploadError("Imported file name is not a valid alias (name.extension)")
    return alias


async def import_files(state: AppState, exchange: Exchange) -> None:
    """pict-rs ``import``: POST /image's rules and answer, with the given aliases."""
    _check_key(state, exchange)
    await upload.ingest_parts(state, exchange, import_alias, {"import": "inline"})


async def _json_body(exchange: Exchange) -> bytes:
    body = bytearray()
    async for chunk in exchange.body():
        body += chunk
    return bytes(body)


async def set_not_found(state: AppState, exchange: Exchange) -> None:
    """pict-rs ``set_not_found``: 201 once ``alias`` names an existing file. The body is
    pict-rs's JSON; an empty body with ``?alias=`` is taken too."""
    _check_key(state, exchange)
    raw = await _json_body(exchange)
    if raw.strip():
        try:
            given = _alias_body.decode(raw)
        except msgspec.DecodeError as exc:
            raise InvalidJson(f"Invalid JSON: {exc}") from None
    else:
        given = AliasBody(alias=exchange.arg("alias"), proxy=exchange.arg("proxy"))
    if given.proxy is not None:  # pict-rs tries the proxy form first
        raise ProxyNotAllowed("Cannot use proxied media as Not Found image")
    if given.alias is None:
        raise InvalidJson("Invalid JSON: expected alias or proxy")
    state.require_writable()
    try:
        alias = ids.parse_alias(given.alias)
    except ValueError:
        raise AliasNotFound("Alias not found") from None
    if not await state.repo.set_not_found(alias):
        raise AliasNotFound("Alias not found")
    await exchange.answer_json(201, encode(Ok()))


async def wrong_method(state: AppState, exchange: Exchange) -> None:
    _check_key(state, exchange)  # the key guards the whole scope, as in pict-rs
    await upload.wrong_method(state, exchange)


IMPORT = "/internal/import"
SET_NOT_FOUND = "/internal/set_not_found"
ROUTES = {IMPORT: import_files, SET_NOT_FOUND: set_not_found}
