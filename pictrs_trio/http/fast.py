"""The serving fast path: cached variants and small originals answered in raw ASGI.

Most traffic of a media server is GETs of things already stored. This middleware answers
those without Quart: one indexed SQLite read on the event loop thread, one read of a small
page-cached file, and a response whose head and body go out back to back. Anything it cannot
answer on its own (a miss, a Range request, a large file, any error) falls through to the
Quart app unchanged, which implements the full behaviour; both produce the same headers
(``serve.media_headers``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from loguru import logger

from pictrs_trio import ids, process
from pictrs_trio.errors import PictrsError
from pictrs_trio.http.deadline import ASGIApp, Receive, Scope, Send
from pictrs_trio.http.serve import SMALL_FILE, etag_for, media_headers
from pictrs_trio.repo.records import Found
from pictrs_trio.state import AppState


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _lookup(state: AppState, scope: Scope) -> Found | None:
    """The stored file a GET/HEAD asks for, or None to fall through."""
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
        variant = process.parse_request(ext, pairs, allowed=state.config.media.filters)
        found = state.repo.find_variant_now(ids.parse_alias(source), variant.key)
        if found is not None and found.identifier is not None:
            process.record_access(state, found.hash, variant.key)
        return found
    return None


def fast_path_middleware(app: ASGIApp, state: AppState) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or _header(scope, b"range") is not None
        ):
            await app(scope, receive, send)
            return
        try:
            found = _lookup(state, scope)
        except (PictrsError, ValueError):
            found = None  # let the full app produce the proper answer
        except Exception:
            logger.exception("fast path failed; falling back")
            found = None
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
        head.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": head})
        body = b"" if scope["method"] == "HEAD" else data
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return middleware
