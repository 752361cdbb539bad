"""The in-process test level: a real AppState (SQLite file, file store, engine worker) in
the test's own trio run, and an httpx client that calls the ASGI app directly. No server
process, no sockets: fast tests of routes, answers, errors and cancellation. (Connections
themselves are tested against the real server in tests/e2e.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from pictrs_trio.config import Config
from pictrs_trio.http.app import PictrsApp, create_app
from pictrs_trio.http.exchange import Receive, Scope, Send
from pictrs_trio.runtime.service import open_state, start_background
from pictrs_trio.services.state import AppState

API_KEY = "in-process-key"


def inprocess_config(tmp_path: Path, **server: object) -> Config:
    return msgspec.convert(
        {
            "server": {
                "api_key": API_KEY,
                "temporary_directory": str(tmp_path / "tmp"),
                "max_file_count": 3,
                **server,
            },
            "media": {"engine_workers": 1, "exiftool_idle_timeout": 0.5},
            "repo": {"type": "sqlite", "path": str(tmp_path / "sqlite")},
            "store": {"type": "filesystem", "path": str(tmp_path / "files")},
        },
        Config,
    )


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[AppState]:
    """A running AppState, as one server process has it (journal owner, job runners)."""
    async with open_state(inprocess_config(tmp_path)) as opened, trio.open_nursery() as nursery:
        await start_background(opened, nursery)
        yield opened
        nursery.cancel_scope.cancel()


@pytest.fixture
def app(state: AppState) -> PictrsApp:
    return create_app(state)


def as_hypercorn(app: PictrsApp) -> Any:
    """``app`` as hypercorn runs it: what the app left unread of a request (the end-of-body
    message after the last declared byte, say) is dropped with the request's queue. httpx's
    ASGITransport would instead leave its request stream unfinished, which trio reports."""

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        if scope["type"] == "http":
            while (await receive())["type"] != "http.disconnect":
                pass

    return run


def asgi_client(app: PictrsApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=as_hypercorn(app))
    return httpx.AsyncClient(transport=transport, base_url="http://pictrs.test")


@pytest.fixture
async def client(app: PictrsApp) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


def rows(state: AppState, sql: str) -> list[tuple[object, ...]]:
    reader = state.repo._loop_reader  # type: ignore[attr-defined]
    return [tuple(r) for r in reader.execute(sql).fetchall()]


def store_files(state: AppState) -> set[str]:
    root = Path(state.config.store.path)  # type: ignore[union-attr]
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def upload(client: httpx.AsyncClient, path: Path, **query: str) -> httpx.Response:
    data = await trio.Path(path).read_bytes()
    r = await client.post("/image", params=query, files={"images[]": (path.name, data)})
    assert r.status_code == 201, r.text
    return r
