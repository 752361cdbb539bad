"""GET /internal/events: the journal's events over a WebSocket, against the real server,
with trio-websocket as the client (what ``pictrs-trio jobs watch`` uses)."""

from __future__ import annotations

import json
import os
import signal
import socket as socket_module
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

from pictrs_trio.repo.sqlite import open_sqlite_repo
from pictrs_trio.runtime.watch_command import open_feed
from pictrs_trio.store.file import open_file_store
from tests.e2e.conftest import REPO, Server, free_port
from tests.migrate_helpers import fill

API_KEY = "events-key"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module's tests (each reads only the events it caused)."""
    server = Server(tmp_path_factory.mktemp("events"), ["--api-key", API_KEY]).start()
    yield server
    server.stop()


def events_url(server: Server, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/internal/events{query}"


async def until(socket: WebSocketConnection, done: Any, seconds: float = 30) -> list[dict]:
    """Messages (decoded) until one for which ``done`` is true, that one included."""
    seen: list[dict] = []
    with trio.fail_after(seconds):
        while not seen or not done(seen[-1]):
            seen.append(json.loads(await socket.get_message()))
    return seen


async def upload_backgrounded(server: Server, path: Path) -> str:
    async with httpx.AsyncClient(base_url=server.url) as c:
        data = await trio.Path(path).read_bytes()
        files = [("images[]", (path.name, data, "image/png"))]
        r = await c.post("/image/backgrounded", files=files)
    assert r.status_code == 202, r.text
    return str(r.json()["uploads"][0]["upload_id"])


async def test_a_backgrounded_upload_s_ingest_is_seen_live_and_again_with_since(
    keyed_server: Server, samples: dict[str, Path]
) -> None:
    async with open_feed(events_url(keyed_server), API_KEY) as socket:
        upload_id = await upload_backgrounded(keyed_server, samples["test.png"])

        def ingest_done(m: dict) -> bool:
            payload = m.get("payload") or {}
            return m["event"] == "finished" and payload.get("upload_id") == upload_id

        seen = await until(socket, ingest_done)
    mine = [m for m in seen if (m.get("payload") or {}).get("upload_id") == upload_id]
    assert [m["event"] for m in mine] == ["pushed", "started", "finished"]
    assert {(m["type"], m["queue"], m["kind"]) for m in mine} == {
        ("job", "ingest", "ingest_upload")
    }
    assert len({m["job"] for m in mine}) == 1 and mine[1]["attempt"] == 1
    assert [m["id"] for m in seen] == sorted({m["id"] for m in seen})
    # The upload is really done: its claim answers the stored file.
    async with httpx.AsyncClient(base_url=keyed_server.url) as c:
        claimed = await c.get("/image/backgrounded/claim", params={"upload_id": upload_id})
    assert claimed.status_code == 200, claimed.text

    # A client that reconnects with the last id it saw misses nothing after it.
    since = mine[0]["id"]
    async with open_feed(events_url(keyed_server), API_KEY, since) as again:
        replay = await until(again, ingest_done)
    assert [m["id"] for m in replay] == [m["id"] for m in seen if m["id"] > since]


@pytest.mark.parametrize(
    ("key", "query", "status", "code"),
    [
        (None, "", 401, "invalid-api-token"),
        ("wrong", "", 401, "invalid-api-token"),
        (API_KEY, "?since=-1", 400, "invalid-query"),
    ],
)
async def test_refused_without_the_key_or_with_a_bad_query(
    keyed_server: Server, key: str | None, query: str, status: int, code: str
) -> None:
    with pytest.raises(ConnectionRejected) as refused:
        async with open_feed(events_url(keyed_server, query), key):
            pass
    assert refused.value.status_code == status
    assert json.loads(refused.value.body or b"")["code"] == code
    async with httpx.AsyncClient(base_url=keyed_server.url) as c:
        assert (await c.get("/healthz")).status_code == 200


async def test_other_websocket_paths_are_404(keyed_server: Server) -> None:
    with pytest.raises(ConnectionRejected) as refused:
        async with open_feed(f"ws://127.0.0.1:{keyed_server.port}/image", API_KEY):
            pass
    assert refused.value.status_code == 404


async def test_sigterm_closes_open_feeds_with_going_away(tmp_path: Path) -> None:
    keyed_server = Server(tmp_path, ["--api-key", API_KEY]).start()
    async with open_feed(events_url(keyed_server), API_KEY) as socket:
        assert keyed_server.proc is not None
        keyed_server.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15), pytest.raises(ConnectionClosed) as closed:
            while True:
                await socket.get_message()
    assert closed.value.reason is not None and closed.value.reason.code == 1001
    assert await trio.to_thread.run_sync(keyed_server.proc.wait, 15) == 0


def watch_command(server: Server, key: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PICTRS__SERVER__API_KEY": key}
    argv = [sys.executable, "-m", "pictrs_trio", "jobs", "watch", "--url", events_url(server)]
    return subprocess.Popen(
        [*argv, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


async def test_jobs_watch_prints_one_line_per_event(
    keyed_server: Server, samples: dict[str, Path]
) -> None:
    upload_id = await upload_backgrounded(keyed_server, samples["test.png"])
    watcher = watch_command(keyed_server, API_KEY, "--since", "0")  # from the log's start
    try:
        assert watcher.stdout is not None
        lines: list[str] = []
        with trio.fail_after(30):
            while not any("finished" in x and f"upload_id={upload_id}" in x for x in lines):
                lines.append(await trio.to_thread.run_sync(watcher.stdout.readline))
        mine = [x for x in lines if f"upload_id={upload_id}" in x]
        assert [x.split(" ")[4] for x in mine] == ["pushed", "started", "finished"]
        assert all(x.split(" ")[1:3] == ["ingest", "ingest_upload"] for x in mine)
    finally:
        watcher.send_signal(signal.SIGINT)
        await trio.to_thread.run_sync(watcher.communicate, None, 10)  # and closes the pipes
    assert watcher.returncode == 130


async def test_jobs_watch_stops_when_the_key_is_refused(keyed_server: Server) -> None:
    watcher = watch_command(keyed_server, "not-the-key")
    out, err = await trio.to_thread.run_sync(watcher.communicate, None, 30)
    assert watcher.returncode == 1, err
    assert "the API key was refused (401)" in err
    assert out == ""


async def test_migrate_store_serves_the_feed_with_its_progress(tmp_path: Path) -> None:
    """migrate-store (the server stopped) answers on server.address: its progress events on
    the feed, 503 migrating to anything else; the address is free again when it ends."""
    a, b, db = tmp_path / "a", tmp_path / "b", tmp_path / "db"
    async with open_sqlite_repo(db) as repo, open_file_store(a) as store:
        await fill(repo, store, 400, variant_every=0, motion_every=0)
    port = free_port()
    env = {
        **os.environ,
        "PICTRS__SERVER__TEMPORARY_DIRECTORY": str(tmp_path / "tmp"),
        "PICTRS__SERVER__API_KEY": API_KEY,
        "PICTRS__SERVER__ADDRESS": f"127.0.0.1:{port}",
    }
    argv = [sys.executable, "-m", "pictrs_trio", "migrate-store", "--concurrency", "1",
            "filesystem", "-p", str(a), "filesystem", "-p", str(b),
            "sqlite", "-p", str(db)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        busy = None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            with trio.fail_after(30):
                while busy is None:
                    try:
                        busy = await c.get("/healthz")
                    except httpx.TransportError:
                        await trio.sleep(0.02)
        assert busy.status_code == 503 and busy.json()["code"] == "migrating"
        url = f"ws://127.0.0.1:{port}/internal/events"
        async with open_feed(url, API_KEY, since=0) as socket:
            seen = await until(socket, lambda m: m["event"] == "done", seconds=60)
        out, _ = await trio.to_thread.run_sync(proc.communicate, None, 30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    progress = [m for m in seen if m["type"] == "progress"]
    assert {(m["queue"], m["kind"]) for m in progress} == {("migrate", "MigrationProgress")}
    moved = [m["payload"]["moved"] for m in progress]
    assert moved == sorted(moved) and moved[-1] == 400 and len(moved) >= 2
    end = progress[-1]["payload"]
    assert end["finished"] is True and end["failed"] == 0
    assert end["from_store"] == f"filesystem -p {a}" and end["to_store"] == f"filesystem -p {b}"
    assert "moved 400 files" in out
    with socket_module.socket() as probe:  # no listener left (TIME_WAIT is fine, as for run)
        probe.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
