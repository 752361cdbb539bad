"""create_app(state): the quart-trio application with every route and the error mapping."""

from __future__ import annotations

from typing import Any, cast

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from pictrs_trio.http import backgrounded, download, health, image, internal, variants
from pictrs_trio.http.backpressure import BoundedHTTPConnection
from pictrs_trio.http.deadline import ASGIApp, deadline_middleware
from pictrs_trio.http.failure import failure_answer, innermost
from pictrs_trio.http.fast import fast_path_middleware
from pictrs_trio.http.state import EXTENSION_KEY
from pictrs_trio.rules.validate import MIB
from pictrs_trio.services.state import AppState

DRAIN_SECONDS = 120.0
DRAIN_BYTES = 256 * MIB  # past this, let the connection close instead


async def drain_body() -> None:
    """Read and drop what is left of the request body before an error answer goes out.

    A handler may fail before reading the body (a bad query, a size limit). hypercorn
    closes a keep-alive connection whose body was not fully read, and clients such as httpx
    send the whole body before reading the answer, so they would see a dead connection.
    pict-rs has the same drainer. Bounded in time and bytes; past them the connection
    simply closes.
    """
    drained = 0
    with trio.move_on_after(DRAIN_SECONDS):
        try:
            async for chunk in request.body:
                drained += len(chunk)
                if drained > DRAIN_BYTES:
                    return
        except Exception:  # the client went away
            return


async def handle_error(exc: Exception) -> Response:
    await drain_body()
    exc2 = innermost(exc)
    if isinstance(exc2, HTTPException):
        # Routing misses: pict-rs answers unknown paths with an empty 404, wrong methods 405.
        return Response(b"", status=exc2.code or 500)
    status, body = failure_answer(exc2)
    return Response(body, status=status, content_type="application/json")


def create_app(state: AppState) -> Any:
    """Build the app. Returns the ASGI callable with the deadline middleware outermost."""
    app = QuartTrio(__name__)
    app.asgi_http_class = BoundedHTTPConnection
    # No blanket body cap: ingest enforces each file's size while it streams, and a cap
    # here would make Quart refuse the body unread, which leaves the connection unusable.
    app.config["MAX_CONTENT_LENGTH"] = None
    app.config["BODY_TIMEOUT"] = 60
    app.extensions[EXTENSION_KEY] = state
    app.register_blueprint(image.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(variants.bp)
    app.register_blueprint(backgrounded.bp)
    app.register_blueprint(download.bp)
    app.register_blueprint(internal.bp)
    app.register_error_handler(Exception, handle_error)
    # Outermost first: the request deadline, the cached-media fast path, then Quart.
    # (Quart types its ASGI callables with Hypercorn's TypedDicts, ours with plain mappings.)
    quart_app = cast(ASGIApp, app.asgi_app)
    app.asgi_app = cast(  # type: ignore[method-assign]
        Any, deadline_middleware(fast_path_middleware(quart_app, state))
    )
    return app
