"""The request span (``tracing.opentelemetry``): one server span per HTTP request, the
parent of everything the request does (ingest steps, renders, downloads).

    name                        "{method} {route}", or "{method}" when no route matched
    http.request.method         GET, POST, ...
    http.route                  the route's pattern: /image/original/{alias}, never the path
                                itself (aliases, delete tokens)
    http.response.status_code   the answer's status; 5xx marks the span failed
    network.protocol.version    1.1, 2

An incoming W3C ``traceparent`` (and ``tracestate``) header makes the span a child of the
caller's span, in the caller's trace (pict-rs: tracing-actix-web with the TraceContext
propagator, ``src/init_tracing.rs``). The target is this module's name. Without a live tracer
``traced`` returns the app unchanged: no cost per request.
"""

from __future__ import annotations

import re

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map

from pictrs_trio.http import events, internal_raw, serve, upload
from pictrs_trio.http.exchange import ASGIApp, Message, Receive, Scope, Send
from pictrs_trio.services.tracing import Tracer

# The raw ASGI routes (http/app.py), which Quart's map does not know.
READ_ROUTES = {
    "original": serve.ORIGINAL_PATH + "{alias}",
    "original?": serve.ORIGINAL_QUERY,
    "process": serve.PROCESS + "{ext}",
}
EXACT_ROUTES = frozenset({*upload.ROUTES, *internal_raw.ROUTES, events.PATH})
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
_VARIABLE = re.compile(r"<(?:[^:<>]+:)?_?([^<>]+)>")  # werkzeug's <converter:name>


def route_of(url_map: Map, method: str, path: str) -> str | None:
    """The pattern of the route ``path`` is served by, with ``{name}`` for its variables;
    None when no route matches (a 404)."""
    which = serve.route(path)
    if which is not None:
        return READ_ROUTES[which]
    if path in EXACT_ROUTES:
        return path
    adapter = url_map.bind("pictrs")
    try:
        try:
            rule, _ = adapter.match(path, method=method, return_rule=True)
        except MethodNotAllowed as exc:  # a known route all the same (answered 405)
            allowed = next(iter(exc.valid_methods or ()), "GET")
            rule, _ = adapter.match(path, method=allowed, return_rule=True)
    except HTTPException:  # NotFound, RequestRedirect
        return None
    return _VARIABLE.sub(r"{\1}", rule.rule)


def traced(app: ASGIApp, tracer: Tracer, url_map: Map) -> ASGIApp:
    """``app`` with a span around each HTTP request, when ``tracer`` is live."""
    if not tracer.enabled:
        return app

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        method: str = scope["method"]
        route = route_of(url_map, method, scope["path"])
        parent = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in TRACE_HEADERS
        }
        name = f"{method} {route}" if route else method
        with tracer.span(__name__, name, kind="server", parent=parent) as span:
            span.set("http.request.method", method)
            if route:
                span.set("http.route", route)
            span.set("network.protocol.version", scope.get("http_version", "1.1"))

            async def observed(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set("http.response.status_code", status)
                    if status >= 500:
                        span.error(f"answered {status}")
                await send(message)

            await app(scope, receive, observed)

    return run
