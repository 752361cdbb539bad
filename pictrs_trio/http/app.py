"""create_app(state): the ASGI application hypercorn serves.

    every HTTP request -> run_exchange (http/exchange.py: body rules, deadline, connection)
      GET/HEAD of stored media  -> http/serve.py   (raw ASGI, the hot path)
      POST /image[/backgrounded] -> http/upload.py (raw ASGI, the body streams from receive)
      POST /internal/import, /internal/set_not_found -> http/internal_raw.py (raw ASGI)
      anything else             -> the quart-trio app: details, deletes, claims, downloads,
                                   process_backgrounded, /internal/*, /healthz,
                                   /openapi.json (http/openapi.py, from http/operations.py),
                                   the JSON 404 of unknown routes and the 405 of wrong methods
    WebSocket /internal/events  -> http/events.py  (raw ASGI: the journal's event feed)
    lifespan                    -> the quart-trio app

With metrics on, every HTTP request is counted and timed first (``http/metered.py``).

Quart never reads a request body: the exchange hands it an empty one and drops (or refuses)
whatever the client sends, so nothing is buffered behind a handler's back.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from pictrs_trio import version
from pictrs_trio.http import (
    access_log,
    download,
    events,
    health,
    image,
    internal,
    internal_raw,
    metered,
    openapi,
    operations,
    request_span,
    serve,
    upload,
    variants,
)
from pictrs_trio.http.exchange import (
    ASGIApp,
    BodyRules,
    Exchange,
    Message,
    Receive,
    Scope,
    Send,
    run_exchange,
)
from pictrs_trio.http.failure import answer_for, innermost
from pictrs_trio.http.state import CATCH_ALL, EXTENSION_KEY, wrong_method
from pictrs_trio.rules.errors import RouteNotFound
from pictrs_trio.services.state import AppState

EMPTY_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}


async def handle_error(exc: Exception) -> Response:
    """Quart's half of the one error map (the exchange answers raw routes' errors)."""
    inner = innermost(exc)
    if isinstance(inner, MethodNotAllowed):
        # A known path, another method: 405 with Allow (RFC 9110 section 15.5.6), where
        # HEAD is never listed (``refuse_head``).
        allow = [m for m in inner.valid_methods or () if m != "HEAD"]
        headers = {"Allow": ", ".join(allow)} if allow else None
        return Response(b"", status=405, headers=headers)
    if isinstance(inner, HTTPException):
        if inner.code != 404:
            return Response(b"", status=inner.code or 500)
        # An unknown path: pict-rs (actix's default) sends an empty 404; a JSON error tells
        # a client what happened the way every other error does.
        inner = RouteNotFound("Not found")
    status, body = answer_for(inner)
    return Response(body, status=status, content_type="application/json")


async def refuse_head() -> None:
    """Before every Quart route: HEAD answers 405, as in pict-rs, which answers it only for
    stored media (the raw routes of http/serve.py). werkzeug adds HEAD to every GET rule,
    and served like its GET, a HEAD of a delete, a claim or a download would do what the
    GET does, unseen. Under /internal the key is checked first, as for every answer there."""
    rule = request.url_rule
    if request.method != "HEAD" or rule is None or rule.endpoint == CATCH_ALL:
        return
    if request.blueprint == internal.bp.name:
        await internal.check_api_key()
    raise wrong_method(rule.rule)


def quart_app(state: AppState) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)  # pict-rs serves no /static
    app.extensions[EXTENSION_KEY] = state
    # Built once here, not per request: GET /openapi.json sends these bytes.
    app.extensions[openapi.EXTENSION_KEY] = openapi.encode_document(
        operations.OPERATIONS, version()
    )
    for module in (image, variants, download, internal, health, openapi):
        app.register_blueprint(module.bp)
    app.before_request(refuse_head)
    app.register_error_handler(Exception, handle_error)
    return app


class PictrsApp:
    """The ASGI callable: routes each request to its handler under ``run_exchange``."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.quart = quart_app(state)
        self._quart: ASGIApp = self.quart.asgi_app  # type: ignore[assignment]
        server = state.config.server
        timing: dict[str, Any] = {
            "timeout": server.body_timeout,
            "min_rate": float(server.body_min_rate),
        }
        self.read_rules = BodyRules(cap=None, watch=False, **timing)
        self.upload_rules = BodyRules(cap=upload.body_cap(state), watch=True, **timing)
        json_rules = BodyRules(cap=internal_raw.JSON_CAP, watch=True, **timing)
        # Raw routes that read a body: path -> (handler, its body rules, its wrong method).
        self.raw_routes = {
            **{p: (h, self.upload_rules, upload.wrong_method) for p, h in upload.ROUTES.items()},
            internal_raw.IMPORT: (
                internal_raw.import_files,
                self.upload_rules,
                internal_raw.wrong_method,
            ),
            internal_raw.SET_NOT_FOUND: (
                internal_raw.set_not_found,
                json_rules,
                internal_raw.wrong_method,
            ),
        }
        self.other_rules = BodyRules(cap=None, watch=True, **timing)
        logs = state.config.tracing.logging
        self._entry: ASGIApp = self._serve
        if logs.log_requests or logs.log_spans:
            self._entry = access_log.logged(
                self._serve, requests=logs.log_requests, spans=logs.log_spans
            )
        if state.metrics.enabled:
            self._entry = metered.metered(self._entry, state.metrics)
        self._entry = request_span.traced(self._entry, state.tracer, self.quart.url_map)
        # Set at shutdown: answers say Connection: close, event feeds close ("going away").
        self._stopped = trio.Event()
        self._in_flight = 0
        self._quiet = trio.Event()

    def stop(self) -> None:
        """Shutdown began: every answer from now on closes its connection."""
        self._stopped.set()

    async def wait_quiet(self) -> None:
        """Return when no request (or event feed) is being handled."""
        while self._in_flight:
            await self._quiet.wait()

    def _closing(self) -> bool:
        return self._stopped.is_set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._quart(scope, receive, send)
            return
        # Event feeds count too: they close ("going away") as soon as the server stops, and
        # waiting for them lets that close frame go out before hypercorn is cancelled.
        self._in_flight += 1
        try:
            if scope["type"] == "websocket":
                await self._socket(scope, receive, send)
            else:
                await self._route(scope, receive, send)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._quiet.set()
                self._quiet = trio.Event()

    async def _socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != events.PATH:
            if (await receive())["type"] == "websocket.connect":
                await events.refuse(scope, send, RouteNotFound("Not found"))
            return
        await events.events_socket(
            scope,
            receive,
            send,
            journal=self.state.journal,
            api_key=self.state.config.server.api_key,
            stopping=self._stopped,
        )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, method, path = self.state, scope["method"], scope["path"]
        which = serve.route(path)
        if which is not None:

            async def read(exchange: Exchange) -> None:
                await serve.serve_read(state, exchange, which)

            await run_exchange(scope, receive, send, read, self.read_rules, self._closing)
            return
        raw = self.raw_routes.get(path)
        if raw is not None:
            handler, rules, wrong = raw
            if method != "POST":
                handler = wrong

            async def take(exchange: Exchange) -> None:
                await handler(state, exchange)

            await run_exchange(scope, receive, send, take, rules, self._closing)
            return
        await run_exchange(scope, receive, send, self._to_quart, self.other_rules, self._closing)

    async def _to_quart(self, exchange: Exchange) -> None:
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return EMPTY_BODY
            await trio.sleep_forever()  # the exchange watches for the client leaving
            raise AssertionError("unreachable")

        await self._quart(exchange.scope, receive, exchange.send)


def create_app(state: AppState) -> PictrsApp:
    return PictrsApp(state)
