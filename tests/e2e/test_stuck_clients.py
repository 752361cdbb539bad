"""Clients that stop in awkward places: one that resets while a body it sent sits unread,
one that stops reading a large answer, and new connections during a two-process shutdown.
None of them may pin a task, a socket or the shutdown."""

from __future__ import annotations

import http.server
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pyvips

from tests.e2e.conftest import ALLOW_LOOPBACK, Server
from tests.e2e.procfs import tcp_sockets
from tests.e2e.rawhttp import RawConnection, multipart

MIB = 1024 * 1024


def client_sockets(srv: Server, client_port: int) -> list[str]:
    """States of the server's sockets connected to ``client_port``."""
    assert srv.proc is not None
    return [state for _, remote, state in tcp_sockets(srv.proc.pid) if remote == client_port]


def wait_gone(srv: Server, client_port: int, seconds: float) -> float:
    """Seconds until the server has no socket to ``client_port`` (fails past ``seconds``)."""
    start = time.monotonic()
    while client_sockets(srv, client_port):
        assert time.monotonic() - start < seconds, client_sockets(srv, client_port)
        time.sleep(0.05)
    return time.monotonic() - start


class SlowRemote:
    """A remote that answers each GET with ``png`` after ``delay`` seconds."""

    def __init__(self, png: bytes, delay: float) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_reset_over_an_unread_body_does_not_pin_the_shutdown(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    """A GET declaring a 40 MB body sends 2 MB of it (hypercorn's queue fills, nobody reads
    it), then resets while the handler waits on a slow remote (a first ``?proxy=``). The
    answer's write fails, and hypercorn's disconnect needs room in that full queue: the
    server must still let the request go, and SIGTERM must end it promptly."""
    remote = SlowRemote(samples["test.png"].read_bytes(), delay=1.5)
    srv = Server(tmp_path, env=ALLOW_LOOPBACK).start()
    try:
        for n, deadline in enumerate((None, str(time.time_ns() + 3600 * 10**9))):
            conn = RawConnection(srv.port)
            headers = [("Content-Length", str(40 * MIB))]
            if deadline is not None:
                headers.append(("X-Request-Deadline", deadline))
            url = f"http://127.0.0.1:{remote.port}/{n}.png"
            conn.send_head("GET", f"/image/original?proxy={url}", headers)
            conn.send_body(b"x" * 2 * MIB)
            # Let hypercorn fill its queue first: a reset discards what it had not read yet.
            time.sleep(0.5)
            conn.reset()
        time.sleep(2)  # the remote has answered both by now
        with srv.client() as c:  # the server goes on, and kept what it fetched
            url = f"http://127.0.0.1:{remote.port}/0.png"
            assert c.get("/image/original", params={"proxy": url}).status_code == 200
        signalled = time.monotonic()
        assert srv.stop() == 0
        assert time.monotonic() - signalled < 10
        assert "still running" not in srv.log.read_text()
    finally:
        srv.stop()
        remote.close()


def test_a_client_that_stops_reading_is_dropped_after_send_timeout(tmp_path: Path) -> None:
    """A large original requested by a client that never reads it: once nothing moves for
    ``server.send_timeout`` seconds, the kernel drops the connection and the write ends."""
    noise = pyvips.Image.gaussnoise(2000, 2000, sigma=80).cast("uchar").bandjoin([
        pyvips.Image.gaussnoise(2000, 2000, sigma=80).cast("uchar")
    ] * 2)  # fmt: skip
    png = noise.pngsave_buffer(compression=1)
    assert len(png) > 10 * MIB  # more than the socket buffers on both sides hold
    srv = Server(tmp_path, env={"PICTRS__SERVER__SEND_TIMEOUT": "2"}).start()
    try:
        with srv.client() as c:
            alias = c.post("/image", files={"images[]": ("n.png", png)}).json()["files"][0]["file"]
        conn = RawConnection(srv.port, rcvbuf=4096)
        conn.send_head("GET", f"/image/original/{alias}", [])
        conn.end()
        port = conn.local[1]
        time.sleep(1)
        assert client_sockets(srv, port) == ["ESTABLISHED"]  # stalled, not done
        took = wait_gone(srv, port, 20)
        print(f"dropped {took + 1:.1f} s after the request (send_timeout 2 s)")
        conn.close()
        with srv.client() as c:  # a client that reads gets all of it
            r = c.get(f"/image/original/{alias}")
            assert r.status_code == 200 and len(r.content) == int(r.headers["content-length"])
            assert len(r.content) > 10 * MIB
    finally:
        srv.stop()


def test_new_connections_are_refused_while_two_workers_stop(tmp_path: Path) -> None:
    """SIGTERM with a request in flight: the port closes at once (a new connection is
    refused, so a load balancer moves on), while that request still gets its time."""
    env = {"PICTRS__SERVER__WORKERS": "2", "PICTRS__SERVER__SHUTDOWN_TIMEOUT": "8"}
    srv = Server(tmp_path, env=env).start()
    try:
        assert srv.proc is not None
        held = RawConnection(srv.port, timeout=30)
        headers, body = multipart([("a.png", b"x" * 100_000)])
        held.send_head("POST", "/image", [*headers, ("Content-Length", str(len(body)))])
        held.send_body(body[:1000])  # in flight: the rest never comes until we say so
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        refused = None
        while time.monotonic() - signalled < 6:
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
            except ConnectionRefusedError:
                refused = time.monotonic() - signalled
                break
            time.sleep(0.1)
        assert refused is not None and refused < 3, "new connections still accepted"
        assert srv.proc.poll() is None  # the held request still has its time
        held.close()
        assert srv.proc.wait(timeout=20) == 0
    finally:
        srv.stop()


def test_the_workers_config_stays_out_of_their_children(tmp_path: Path) -> None:
    """The config (API key, store credentials) reaches each worker through its environment;
    the engine workers and tools that worker starts must not inherit it."""
    env = {"PICTRS__SERVER__WORKERS": "2", "PICTRS__MEDIA__EXIFTOOL_IDLE_TIMEOUT": "0"}
    srv = Server(tmp_path, env=env).start()
    try:
        assert srv.proc is not None
        tree = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", ",".join(_children(srv.proc.pid))],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert tree, "the workers have no children"
        for pid in tree:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"PICTRS_TRIO_WORKER_CONFIG" not in environ, pid
    finally:
        srv.stop()


def _children(pid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return out.stdout.split()
