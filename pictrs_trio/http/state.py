"""What the Quart route handlers share: the typed accessor for AppState and the two kinds of
answer they give (JSON, and pict-rs's bodiless statuses)."""

from __future__ import annotations

from typing import cast

from quart import Response, current_app
from werkzeug.exceptions import MethodNotAllowed

from pictrs_trio.services.state import AppState

EXTENSION_KEY = "pictrs_trio"


def app_state() -> AppState:
    return cast(AppState, current_app.extensions[EXTENSION_KEY])


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, content_type="application/json")


def empty(status: int) -> Response:
    """pict-rs's bodiless answers: /healthz's 200, 202 and 204, and the 404 (and 400) some
    routes give for a missing alias instead of an error body (pict-rs ``src/lib.rs``). No
    Content-Type, as pict-rs's ``HttpResponse::…().finish()`` and the raw routes'
    ``answer_empty``: there is no body to have a type (Quart would say text/html)."""
    response = Response(b"", status=status)
    del response.headers["Content-Type"]
    return response


CATCH_ALL = "internal.unknown"  # the rule of unknown /internal paths (http/internal.py)


def wrong_method(rule: str) -> MethodNotAllowed:
    """The 405 for a request to ``rule`` (a url_map rule's text) with a method none of its
    routes takes; Allow lists theirs. HEAD is not among them: pict-rs answers it only for
    stored media (raw routes, ``http/serve.py``), though werkzeug adds it to every GET rule
    (``http/app.py`` ``refuse_head``)."""
    allowed = {
        method
        for each in current_app.url_map.iter_rules()
        if each.rule == rule and each.endpoint != CATCH_ALL
        for method in each.methods or ()
    }
    return MethodNotAllowed(valid_methods=sorted(allowed - {"HEAD"}))
