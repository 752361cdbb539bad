"""The serving fast path: cached variants and small originals answered in raw ASGI.

Most traffic of a media server is GETs of things already stored. This middleware answers
those without Quart: one indexed SQLite read on the event loop thread, one read of a small
page-cached file, and a response whose head and body go out back to back. A GET for a variant
not rendered yet renders it through ``render.find_or_render``, as the Quart route would.
Anything else it cannot answer on its own (a HEAD miss, a Range request, a large file, any
error) falls through to the Quart app unchanged, which implements the full behaviour; both
produce the same headers (``serve.media_headers``).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qsl

from loguru import logger

from pictrs_trio.http.deadline import ASGIApp, Receive, Scope, Send
from pictrs_trio.http.failure import failure_answer, innermost
from pictrs_trio.http.serve import SMALL_FILE, etag_for, media_headers
from pictrs_trio.repo.records import Found, Hash
from pictrs_trio.rules import ids
from pictrs_trio.rules.errors import AliasNotFound, PictrsError
from pictrs_trio.services import render
from pictrs_trio.services.state import AppState


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class _Miss(NamedTuple):
    """A variant not rendered yet: a GET renders it here (HEAD answers 404 in Quart)."""

    alias: str
    variant: render.VariantRequest
    hash: Hash


def _lookup(state: AppState, scope: Scope) -> Found | _Miss | None:
    """The stored file a GET/HEAD asks for, a variant to render, or None to fall through."""
    path: str = scope["path"]
    if path.startswith("/image/original/"):
        raw = path[len("/image/original/") :]
        if "/" in raw:
            return None
        return state.repo.find_original_now(ids.parse_alias(raw))
    if path.startswith("/image/process.") and "/" not in path[len("/image/process.") :]:
        ext = path[len("/image/process.") :]
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        source = next((v for k, v in pairs if k == "src"), None)
        if source is None:
            source = next((v for k, v in pairs if k == "alias"), None)
        if source is None:
            return None
        variant = render.parse_request(ext, pairs, allowed=state.config.media.filters)
        alias = ids.parse_alias(source)
        found = state.repo.find_variant_now(alias, variant.key)
        if found is None:
            return None
        if found.identifier is None:
            return _Miss(alias, variant, found.hash)
        render.record_access(state, found.hash, variant.key)
        return found
    return None


class _Failed(NamedTuple):
    status: int
    body: bytes  # pict-rs error JSON, or empty
    head: list[tuple[bytes, bytes]]


async def _render(state: AppState, miss: _Miss) -> Found | _Failed:
    """Render a missing variant (the most common miss: a new thumbnail). A failed render is
    answered as the Quart route would (an alias gone meanwhile: empty 404) and never tried
    twice: a file that kills the engine costs one attempt per request.

    Unlike Quart's request handling, nothing here watches for the client going away: a
    render whose client disconnected runs on (bounded by the deadline and the engine's
    time limit) and its variant is kept for the next request."""
    try:
        rendered = await render.find_or_render(state, miss.alias, miss.variant)
    except Exception as exc:
        inner = innermost(exc)
        if isinstance(inner, AliasNotFound):
            return _Failed(404, b"", [])
        return _Failed(*failure_answer(inner), [(b"content-type", b"application/json")])
    return Found(hash=miss.hash, identifier=rendered.identifier, details=rendered.details)


async def _send(
    send: Send, status: int, head: list[tuple[bytes, bytes]], body: bytes, *, head_only: bool
) -> None:
    """Head and body back to back; a HEAD gets the length of what a GET would send."""
    head.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


def fast_path_middleware(app: ASGIApp, state: AppState) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or _header(scope, b"range") is not None
        ):
            await app(scope, receive, send)
            return
        looked: Found | _Miss | None
        try:
            looked = _lookup(state, scope)
        except (PictrsError, ValueError):
            looked = None  # let the full app produce the proper answer
        except Exception:
            logger.exception("fast path failed; falling back")
            looked = None
        found: Found | _Failed | None
        if isinstance(looked, _Miss):  # HEAD of a missing variant: 404, in Quart
            found = await _render(state, looked) if scope["method"] == "GET" else None
        else:
            found = looked
        if isinstance(found, _Failed):
            await _send(send, found.status, found.head, found.body, head_only=False)
            return
        if found is None or found.identifier is None or found.details is None:
            await app(scope, receive, send)
            return
        data = state.store.read_now(found.identifier, SMALL_FILE)
        if data is None:
            await app(scope, receive, send)
            return
        etag = etag_for(found.identifier)
        headers = media_headers(found.details, etag)
        status = 200
        if_none_match = _header(scope, b"if-none-match")
        if if_none_match is not None and etag.encode() in if_none_match:
            status, data = 304, b""
        head = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await _send(send, status, head, data, head_only=scope["method"] == "HEAD")

    return middleware
