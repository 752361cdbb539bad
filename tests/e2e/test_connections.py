"""Connections as real clients use them: one keep-alive connection carrying several
requests after early answers, bodies refused by size or speed, clients that leave, the
server's descriptors after a load, and SIGTERM under load."""

from __future__ import annotations

import http.server
import json
import os
import select
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ALLOW_LOOPBACK, Server, free_port
from tests.e2e.procfs import fd_count, tcp_sockets, tcp_states
from tests.e2e.rawhttp import RawConnection, chunks_of, multipart

MIB = 1024 * 1024
KEY = "test-api-key"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """max_file_size 1 MB: an upload request's cap is 1 MB of file + 2 MB of framing."""
    server = Server(
        tmp_path_factory.mktemp("connections"),
        env={"PICTRS__SERVER__API_KEY": KEY, "PICTRS__MEDIA__MAX_FILE_SIZE": "1", **ALLOW_LOOPBACK},
    ).start()
    yield server
    server.stop()


def upload_and_read(conn: RawConnection, png: bytes) -> None:
    """An upload and a read of it on ``conn``, both answered correctly."""
    headers, body = multipart([("a.png", png)])
    answer = conn.request("POST", "/image", headers, body)
    assert answer.status == 201, answer
    alias = json.loads(answer.body)["files"][0]["file"]
    got = conn.request("GET", f"/image/original/{alias}")
    assert got.status == 200 and len(got.body) > 0
    thumb = conn.request("GET", f"/image/process.webp?src={alias}&thumbnail=32")
    assert thumb.status == 200 and thumb.body[:4] == b"RIFF"


def early_answers(png: bytes) -> list[tuple[str, str, list[tuple[str, str]], bytes, int, str]]:
    """(what, target, headers, body, status, code) of requests answered before their body
    (1.5–2 MB) is read."""
    noise = os.urandom(1_500_000)
    part_headers, part_body = multipart([("big.bin", os.urandom(900_000))])
    return [
        ("unknown internal route", "/internal/nope", [("X-Api-Token", KEY)], noise, 404, ""),
        ("no API key", "/internal/purge?alias=x", [], noise, 401, "invalid-api-token"),
        ("wrong method", "/image/original/abc", [], noise, 405, ""),
        ("bad deadline", "/image", [("X-Request-Deadline", "soon"), *part_headers], part_body,
         400, "parse-deadline"),
        ("past deadline", "/image", [("X-Request-Deadline", "1"), *part_headers], part_body,
         408, "request-timeout"),
        ("bad query", "/image?max_width=abc", part_headers, part_body, 400, "invalid-query"),
        ("not multipart", "/image", [("Content-Type", "text/plain")], noise, 400,
         "file-upload-error"),
        ("file over the limit", "/image", *multipart([("big.png", os.urandom(1_100_000))]),
         413, "validate-file-size"),
        ("unknown route", "/nothing/here", [], noise + noise[:500_000], 404, ""),
    ]  # fmt: skip


def test_one_connection_survives_every_early_answer(srv: Server, samples: dict[str, Path]) -> None:
    png = samples["test.png"].read_bytes()
    with RawConnection(srv.port) as conn:
        for what, target, headers, body, status, code in early_answers(png):
            answer = conn.request("POST", target, headers, body)
            assert answer.status == status, (what, answer)
            if code:
                assert json.loads(answer.body)["code"] == code, what
            assert "connection" not in answer.headers, what
            assert conn.reusable, what
            upload_and_read(conn, png)  # the same socket, answered at once


def test_a_pooled_client_keeps_working(srv: Server, samples: dict[str, Path]) -> None:
    """As Lemmy's client does: one pool, requests in a row, early answers among them."""
    png = samples["test.png"].read_bytes()
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=srv.url, limits=limits, timeout=10) as client:
        for what, target, headers, body, status, _ in early_answers(png) * 2:
            r = client.post(target, headers=dict(headers), content=body)
            assert r.status_code == status, what
            up = client.post("/image", files={"images[]": ("a.png", png)})
            assert up.status_code == 201, what
            alias = up.json()["files"][0]["file"]
            assert client.get(f"/image/original/{alias}").content == up_bytes(client, alias)


def up_bytes(client: httpx.Client, alias: str) -> bytes:
    r = client.get(f"/image/original/{alias}")
    assert r.status_code == 200
    return r.content


def test_declared_length_over_the_cap_is_413_before_the_body(srv: Server) -> None:
    for expect_continue in (False, True):
        with RawConnection(srv.port) as conn:
            headers = [("Content-Length", str(10**12)), *multipart([])[0]]
            if expect_continue:
                headers.append(("Expect", "100-continue"))
            conn.send_head("POST", "/image", headers)
            answer = conn.read_answer()  # nothing of the body was sent
            assert answer.status == 413
            assert json.loads(answer.body)["code"] == "validate-file-size"
            assert answer.headers["connection"] == "close"
            assert conn.server_closed(timeout=5)


def test_chunked_over_the_cap_is_413_near_the_cap(srv: Server) -> None:
    """A file of an upload may have 1 MB here; this one never ends. The client sends as
    fast as the server reads and looks for the answer after every chunk."""
    cap = 1 * MIB
    with RawConnection(srv.port, sndbuf=64 * 1024) as conn:
        headers, framing = multipart([("endless.png", b"")])
        conn.send_head("POST", "/image", [*headers, ("Transfer-Encoding", "chunked")])
        conn.send_body(framing[: framing.index(b"\r\n\r\n") + 4])  # the part's head only
        sent = 0
        answered = False
        chunk = os.urandom(64 * 1024)
        while sent < 100 * MIB:
            if select.select([conn.sock], [], [], 0)[0]:
                answered = True
                break
            try:
                conn.send_body(chunk)
            except OSError:
                break
            sent += len(chunk)
        assert answered or sent < 100 * MIB
        answer = conn.read_answer()
    assert answer.status == 413
    assert json.loads(answer.body)["code"] == "validate-file-size"
    # What the client had sent when the answer came: the cap, plus what the two sockets'
    # buffers hold (a few hundred KB on loopback with a small send buffer).
    print(f"413 after {sent / MIB:.2f} MB sent (cap {cap / MIB:.0f} MB)")
    assert cap <= sent < cap + 4 * MIB


def test_a_trickling_body_is_cut_with_408(tmp_path: Path) -> None:
    srv = Server(tmp_path, env={"PICTRS__SERVER__BODY_TIMEOUT": "2"}).start()
    try:
        with RawConnection(srv.port, timeout=30) as conn:
            headers, body = multipart([("a.png", os.urandom(20_000))])
            conn.send_head("POST", "/image", [*headers, ("Content-Length", str(len(body)))])
            start = time.monotonic()
            answered = False
            for piece in chunks_of(body, 100):  # 100 B/s
                if select.select([conn.sock], [], [], 1.0)[0]:
                    answered = True
                    break
                conn.send_body(piece)
            elapsed = time.monotonic() - start
            assert answered
            answer = conn.read_answer()
            assert answer.status == 408
            assert json.loads(answer.body)["code"] == "stream-too-slow"
            assert answer.headers["connection"] == "close"
            # 2 s + 1 s per 500 B received: cut at about 2.5 s
            assert elapsed < 10
            assert conn.server_closed()
    finally:
        srv.stop()


def _load(srv: Server, png: bytes, seconds: float) -> Counter[int]:
    """4 uploaders and 8 readers, each its own pooled client, for ``seconds``."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    with httpx.Client(base_url=srv.url) as c:
        alias = c.post("/image", files={"images[]": ("a.png", png)}).json()["files"][0]["file"]
    stop = time.monotonic() + seconds

    def uploader() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            while time.monotonic() < stop:
                r = client.post("/image", files={"images[]": ("a.png", png)})
                with lock:
                    statuses[r.status_code] += 1

    def reader(n: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            i = 0
            while time.monotonic() < stop:
                i += 1
                r = client.get(f"/image/process.webp?src={alias}&thumbnail={16 + (n * 7 + i) % 64}")
                with lock:
                    statuses[r.status_code] += 1

    threads = [threading.Thread(target=uploader) for _ in range(4)]
    threads += [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_no_socket_left_behind_after_a_load(tmp_path: Path, samples: dict[str, Path]) -> None:
    env = {
        "PICTRS__SERVER__KEEP_ALIVE_TIMEOUT": "2",
        "PICTRS__MEDIA__EXIFTOOL_IDLE_TIMEOUT": "0",  # keep its pipes: a steady count
    }
    srv = Server(tmp_path, env=env).start()
    try:
        assert srv.proc is not None
        pid = srv.proc.pid
        png = samples["test.png"].read_bytes()
        _load(srv, png, 1.0)  # warm up: every lazily opened thing is open now
        time.sleep(3)
        idle = fd_count(pid)
        statuses = _load(srv, png, 6.0)
        assert set(statuses) == {200, 201}, statuses
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = tcp_states(pid)
            if states.get("CLOSE_WAIT", 0) == 0 and fd_count(pid) <= idle:
                break
            time.sleep(0.2)
        states = tcp_states(pid)
        print(f"idle {idle} fds, after the load {fd_count(pid)}; sockets {dict(states)}")
        assert states.get("CLOSE_WAIT", 0) == 0
        assert states.get("ESTABLISHED", 0) == 0
        assert fd_count(pid) <= idle
    finally:
        srv.stop()


def test_a_client_leaving_mid_wait_is_closed_at_once(srv: Server) -> None:
    """A download waits on a remote that answers after 10 s; the client gives up after
    0.5 s: the server closes its end then, not when the wait would have ended."""
    assert srv.proc is not None
    port = free_port()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(10)

        def log_message(self, *args: object) -> None:
            pass

    upstream = http.server.HTTPServer(("127.0.0.1", port), Slow)
    threading.Thread(target=upstream.handle_request, daemon=True).start()
    try:
        conn = RawConnection(srv.port)
        conn.send_head("GET", f"/image/download?url=http://127.0.0.1:{port}/slow.png", [])
        conn.end()
        client_port = conn.local[1]

        def ours() -> list[str]:
            assert srv.proc is not None
            return [s for _, remote, s in tcp_sockets(srv.proc.pid) if remote == client_port]

        time.sleep(0.5)
        assert ours() == ["ESTABLISHED"]
        conn.close()
        deadline = time.monotonic() + 3
        while ours() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ours() == []
    finally:
        upstream.server_close()


def test_sigterm_under_load_finishes_in_flight_and_exits(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    """Every request the server had when SIGTERM came is answered 2xx; requests sent after it
    may find the connection closed (keep-alive clients retry those); the process exits 0."""
    srv = Server(tmp_path).start()
    assert srv.proc is not None
    png = samples["cat.jpg"].read_bytes()
    with httpx.Client(base_url=srv.url) as c:
        alias = c.post("/image", files={"images[]": ("a.jpg", png)}).json()["files"][0]["file"]
    outcomes: list[tuple[float, int | str]] = []  # (when the request was sent, outcome)
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                i += 1
                sent = time.monotonic()
                try:
                    if n % 2:
                        r = c.post("/image", files={"images[]": ("a.jpg", png)})
                    else:
                        r = c.get(f"/image/process.webp?src={alias}&resize={100 + n * 50 + i}")
                    result: int | str = r.status_code
                except httpx.TransportError as exc:
                    result = type(exc).__name__
                with lock:
                    outcomes.append((sent, result))
                if not isinstance(result, int):
                    return  # refused after the signal: this client is done

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    signalled = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.proc.wait(timeout=30)
    took = time.monotonic() - signalled
    stop.set()
    for t in threads:
        t.join(timeout=10)
    before = [o for when, o in outcomes if when < signalled - 0.05]
    after = [o for when, o in outcomes if when >= signalled - 0.05]
    print(f"exit {code} after {took:.1f} s; sent before SIGTERM {Counter(before)}, "
          f"after {Counter(after)}")  # fmt: skip
    assert code == 0
    assert took < 30
    assert before and set(before) <= {200, 201}
    assert {o for o in after if not isinstance(o, int)} <= {
        "ConnectError",
        "RemoteProtocolError",
        "ReadError",
    }
    assert {o for o in after if isinstance(o, int)} <= {200, 201}
