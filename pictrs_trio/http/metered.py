"""The request series (pict-rs ``src/middleware/metrics.rs``): ``pict-rs.request.start``
when a request comes in, ``pict-rs.request.end`` and ``pict-rs.request.timings`` when its
answer has gone out (or it was abandoned), labelled with the route pattern it matched and,
once a head was sent, its status (``metrics/routes.py``). Installed only when metrics are
on, so it costs nothing otherwise.
"""

from __future__ import annotations

import time

from pictrs_trio.http.exchange import ASGIApp, Message, Receive, Scope, Send
from pictrs_trio.metrics import Metrics
from pictrs_trio.metrics.names import REQUEST_END, REQUEST_START, REQUEST_TIMINGS
from pictrs_trio.metrics.routes import path_label, status_label


def metered(app: ASGIApp, metrics: Metrics) -> ASGIApp:
    """``app`` with its HTTP requests counted and timed in ``metrics``."""

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = path_label(scope["path"])
        metrics.count(REQUEST_START, {"path": path})
        status = 0

        async def watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        began = time.perf_counter()
        try:
            await app(scope, receive, watching)
        finally:
            took = time.perf_counter() - began
            # No status: the request ended before an answer began (the client left).
            labels = {"path": path, "status": status_label(status) if status else ""}
            metrics.count(REQUEST_END, labels)
            metrics.observe(REQUEST_TIMINGS, took, labels)

    return run
