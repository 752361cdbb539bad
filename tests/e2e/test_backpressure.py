"""A client sending a huge body while the handler waits on something else must not fill the
server's memory: the body is pulled only as fast as the handler reads it."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ALLOW_LOOPBACK, Server, free_port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server that may download from the slow upstream on loopback."""
    srv = Server(tmp_path, env=ALLOW_LOOPBACK).start()
    yield srv
    srv.stop()


def test_unread_body_does_not_fill_memory(fresh_server: Server) -> None:
    port = free_port()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(4)  # the download handler waits here while the body keeps coming
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    upstream = http.server.HTTPServer(("127.0.0.1", port), Slow)
    threading.Thread(target=upstream.handle_request, daemon=True).start()
    assert fresh_server.proc is not None
    before = rss_mb(fresh_server.proc.pid)
    peak = before
    sent = 0

    def body():
        nonlocal sent
        chunk = bytes(1024 * 1024)
        deadline = time.monotonic() + 5
        while sent < 400 * 1024 * 1024 and time.monotonic() < deadline:
            sent += len(chunk)
            yield chunk

    def sample(stop: threading.Event) -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(fresh_server.proc.pid))  # type: ignore[union-attr]
            time.sleep(0.05)

    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(stop,))
    sampler.start()
    try:
        # the server may close the connection once its answer is out
        with httpx.Client(timeout=30) as c, contextlib.suppress(httpx.HTTPError):
            c.request(
                "GET",
                f"{fresh_server.url}/image/download",
                params={"url": f"http://127.0.0.1:{port}/x"},
                content=body(),
            )
    finally:
        stop.set()
        sampler.join()
        upstream.server_close()
    assert peak - before < 100, f"server grew by {peak - before:.0f} MB"
    with fresh_server.client() as c:
        assert c.get("/healthz").status_code == 200
