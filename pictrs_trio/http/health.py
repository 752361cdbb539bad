"""GET /healthz: the repo answers and the store is writable."""

from __future__ import annotations

from quart import Blueprint, Response

from pictrs_trio.http.state import app_state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
async def healthz() -> Response:
    state = app_state()
    await state.repo.health()
    await state.store.health()
    return Response(b"", status=200)
