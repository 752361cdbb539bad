"""The request log (``tracing.logging.log_requests``, pict-rs's tracing-actix-web lines) and
request spans (``log_spans``): one line when a request completes, with its method, path,
status, duration and bytes sent; with spans, one more when it starts.

Only the path is written, never the query string or headers (an API key, a signed URL), and a
delete token in a path is left out. The logger's name is this module's, which the filter
target ``tracing_actix_web`` selects (``config/logfilter.py``).
"""

from __future__ import annotations

import trio
from loguru import logger

from pictrs_trio.http.exchange import ASGIApp, Message, Receive, Scope, Send

DELETE_PREFIX = "/image/delete/"


def loggable_path(path: str) -> str:
    """``path`` without secrets: ``/image/delete/{token}/{alias}`` keeps only the alias."""
    if path.startswith(DELETE_PREFIX):
        _token, _, alias = path[len(DELETE_PREFIX) :].partition("/")
        return f"{DELETE_PREFIX}-/{alias}"
    return path


def logged(app: ASGIApp, *, requests: bool, spans: bool) -> ASGIApp:
    """``app`` with its HTTP requests logged as configured."""

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        method, path = scope["method"], loggable_path(scope["path"])
        status, sent = 0, 0

        async def counting(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        if spans:
            logger.debug("new request {} {}", method, path)
        began = trio.current_time()
        try:
            await app(scope, receive, counting)
        finally:
            took_ms = (trio.current_time() - began) * 1000
            answered = status or "-"  # no answer: the client left, or the server stopped
            if requests:
                logger.info("{} {} {} {:.1f}ms {}B", method, path, answered, took_ms, sent)
            if spans:
                logger.debug("close request {} {} time.busy={:.1f}ms", method, path, took_ms)

    return run
