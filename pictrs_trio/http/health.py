"""GET /healthz: 200 with an empty body when every part answers; else 503 with the error
JSON naming the part (``services/health.py``)."""

from __future__ import annotations

from quart import Blueprint, Response

from pictrs_trio.http.state import app_state, empty
from pictrs_trio.services import health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
async def healthz() -> Response:
    await health.check(app_state())  # Unhealthy: 503, through the one error map
    return empty(200)
