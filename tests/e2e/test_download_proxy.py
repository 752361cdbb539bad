"""GET /image/download and ``?proxy=`` end to end: the real server fetching from a small
HTTP file server on 127.0.0.1 that counts the requests it gets."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import http.server
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import ALLOW_LOOPBACK, Server, free_port
from tests.e2e.test_jobs import claim
from tests.e2e.test_process import decode, wait_for
from tests.e2e.test_upload_serve_delete import upload

# Downloads and proxied media run on the filesystem store and on object storage
# (tests/e2e/conftest.py); read-only refusals (before any store) and retention (removal, as
# any job removes files) on the filesystem store only.
STORES = ("filesystem", "object")
pytestmark = pytest.mark.usefixtures("store_kind")

API_KEY = "test-api-key"
KEY = {"X-Api-Token": API_KEY}


class Remote:
    """A file server: ``/<any>/<sample name>`` serves that sample; ``…/missing`` is 404,
    ``…/huge`` streams 2 MiB without a length, a path with ``/slow/`` waits 0.5 s first."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = {p.name: p.read_bytes() for p in files.values()}
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        remote = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                with remote.lock:
                    remote.counts[path] += 1
                # the server may stop reading (a size limit): expected
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    remote.answer(self, path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, h: http.server.BaseHTTPRequestHandler, path: str) -> None:
        name = path.rsplit("/", 1)[-1]
        if "/slow/" in path:
            time.sleep(0.5)
        if name == "huge":
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.end_headers()  # HTTP/1.0 without a length: the body ends when we close
            for _ in range(32):
                h.wfile.write(b"\0" * 65536)
            return
        data = self.files.get(name)
        if data is None:
            h.send_error(404)
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str) -> int:
        with self.lock:
            return self.counts[path]


@pytest.fixture(scope="module")
def remote(samples: dict[str, Path]) -> Iterator[Remote]:
    r = Remote(samples)
    r.thread.start()
    yield r
    r.httpd.shutdown()
    r.httpd.server_close()


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, store_kind: str, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """One server per store for the module. It names the store itself: a module fixture is
    made before the per-test fixture that picks the store for ``Server(...)``."""
    moto = request.getfixturevalue("moto") if store_kind == "object" else None
    root = tmp_path_factory.mktemp("dl")
    s = Server(root, ["--api-key", API_KEY], env=ALLOW_LOOPBACK, store=store_kind, moto=moto)
    yield s.start()
    s.stop()


def size_of(data: bytes) -> tuple[int, int]:
    img = decode(data)
    return img.width, img.height


def assert_error(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


# --- download ---------------------------------------------------------------------------------


def test_download_inline(srv: Server, remote: Remote) -> None:
    with srv.client() as c:
        r = c.get("/image/download", params={"url": remote.url("/dl/test.png")})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["msg"] == "ok"
        [entry] = body["files"]
        d = entry["details"]
        assert (d["width"], d["height"], d["content_type"]) == (640, 360, "image/png")
        stored = c.get(f"/image/original/{entry['file']}")
        assert stored.status_code == 200
        assert size_of(stored.content) == (640, 360)
        # the upload query's limits and operations apply to downloads too
        r = c.get("/image/download", params={"url": remote.url("/dl2/cat.jpg"), "thumbnail": "100"})
        assert r.status_code == 201, r.text
        d = r.json()["files"][0]["details"]
        assert max(d["width"], d["height"]) == 100
        limited = c.get(
            "/image/download", params={"url": remote.url("/dl3/cat.jpg"), "max_width": "100"}
        )
        assert_error(limited, 400, "validate-width")
    assert remote.count("/dl/test.png") == 1


def test_download_backgrounded(srv: Server, remote: Remote) -> None:
    with srv.client() as c:
        r = c.get(
            "/image/download", params={"url": remote.url("/bg/scene.webp"), "backgrounded": "true"}
        )
        assert r.status_code == 202, r.text
        [up] = r.json()["uploads"]
        done = claim(c, up["upload_id"])
        assert done.status_code == 200, done.text
        entry = done.json()["files"][0]
        assert (entry["details"]["width"], entry["details"]["height"]) == (550, 368)
        stored = c.get(f"/image/original/{entry['file']}")
        assert size_of(stored.content) == (550, 368)
        bad = c.get(
            "/image/download", params={"url": remote.url("/bg/scene.webp"), "backgrounded": "yes"}
        )
        assert_error(bad, 400, "invalid-query")


def test_download_errors(srv: Server, remote: Remote) -> None:
    with srv.client() as c:
        before = len(srv.stored_files())
        missing = c.get("/image/download", params={"url": remote.url("/e/missing")})
        assert_error(missing, 500, "download-file-error")
        assert "404" in missing.json()["msg"]

        huge = c.get("/image/download", params={"url": remote.url("/e/huge"), "max_file_size": "1"})
        assert_error(huge, 400, "validate-file-size")
        huge_bg = c.get(
            "/image/download",
            params={"url": remote.url("/e2/huge"), "max_file_size": "1", "backgrounded": "true"},
        )
        assert_error(huge_bg, 400, "validate-file-size")

        refused = c.get("/image/download", params={"url": f"http://127.0.0.1:{free_port()}/x.png"})
        assert_error(refused, 500, "http-client-error")

        for url in ("not a url", "/relative.png", "http://"):
            assert_error(c.get("/image/download", params={"url": url}), 400, "invalid-query")
        assert_error(
            c.get("/image/download", params={"url": "ftp://127.0.0.1/x.png"}),
            400,
            "url-not-allowed",
        )
        assert_error(c.get("/image/download"), 400, "invalid-query")
        assert_error(
            c.get("/image/download", params={"url": remote.url("/e/test.png"), "bogus": "1"}),
            400,
            "invalid-process-path",
        )
        assert remote.count("/e/test.png") == 0  # bad queries never reach the network
        # nothing was kept from the failures
        assert len(srv.stored_files(expect=before)) == before


@pytest.mark.stores("filesystem")
def test_read_only(tmp_path: Path, remote: Remote) -> None:
    s = Server(tmp_path, ["--read-only", "--api-key", API_KEY], env=ALLOW_LOOPBACK).start()
    try:
        with s.client() as c:
            url = remote.url("/ro/test.png")
            assert_error(c.get("/image/download", params={"url": url}), 400, "read-only")
            assert_error(c.get("/image/original", params={"proxy": url}), 400, "read-only")
            assert_error(
                c.get("/image/process.png", params={"proxy": url, "thumbnail": "9"}),
                400,
                "read-only",
            )
            assert_error(
                c.get("/image/details/original", params={"proxy": url}), 404, "proxy-not-found"
            )
        assert remote.count("/ro/test.png") == 0
    finally:
        s.stop()


# --- proxy ------------------------------------------------------------------------------------


def test_proxy_original_downloads_once(srv: Server, remote: Remote) -> None:
    url = remote.url("/px/cat.jpg")
    with srv.client() as c:
        # looking up never downloads
        assert_error(
            c.get("/image/details/original", params={"proxy": url}), 404, "proxy-not-found"
        )
        assert c.head("/image/original", params={"proxy": url}).status_code == 404
        assert c.head("/image/process.png", params={"proxy": url}).status_code == 404
        assert c.get("/image/process_backgrounded.png", params={"proxy": url}).status_code == 404
        assert_error(
            c.get("/image/details/process.png", params={"proxy": url}), 404, "proxy-not-found"
        )
        assert_error(
            c.get("/internal/identifier", params={"proxy": url}, headers=KEY),
            404,
            "proxy-not-found",
        )
        assert remote.count("/px/cat.jpg") == 0

        first = c.get("/image/original", params={"proxy": url})
        assert first.status_code == 200, first.text
        assert size_of(first.content) == (1200, 1387)
        again = c.get("/image/original", params={"proxy": url})
        assert again.status_code == 200
        assert again.content == first.content
        assert remote.count("/px/cat.jpg") == 1

        details = c.get("/image/details/original", params={"proxy": url})
        assert details.status_code == 200
        assert (details.json()["width"], details.json()["height"]) == (1200, 1387)
        assert c.head("/image/original", params={"proxy": url}).status_code == 200
        [alias] = c.get("/internal/aliases", params={"proxy": url}, headers=KEY).json()["aliases"]
        assert c.get(f"/image/original/{alias}").content == first.content
        # proxy before alias on alias queries; src before proxy on process queries
        other = upload(c, remote_sample(remote, "test.png")).json()["files"][0]["file"]
        both = c.get("/image/details/original", params={"proxy": url, "alias": other})
        assert both.json()["width"] == 1200
        thumb = c.get("/image/process.png", params={"src": other, "proxy": url, "thumbnail": "40"})
        assert size_of(thumb.content) == (40, 23)
        assert remote.count("/px/cat.jpg") == 1


def remote_sample(remote: Remote, name: str) -> Path:
    """A sample as a file, for a plain upload next to proxied media."""
    path = Path(tempfile.mkdtemp()) / name
    path.write_bytes(remote.files[name])
    return path


def test_proxy_process(srv: Server, remote: Remote) -> None:
    url = remote.url("/pp/scene.webp")
    with srv.client() as c:
        r = c.get("/image/process.webp", params={"proxy": url, "thumbnail": "50"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/webp"
        assert size_of(r.content) == (50, 33)
        assert (
            c.head("/image/process.webp", params={"proxy": url, "thumbnail": "50"}).status_code
            == 200
        )
        d = c.get("/image/details/process.webp", params={"proxy": url, "thumbnail": "50"})
        assert d.status_code == 200
        assert (d.json()["width"], d.json()["height"]) == (50, 33)
        assert (
            c.get(
                "/image/process_backgrounded.webp", params={"proxy": url, "thumbnail": "60"}
            ).status_code
            == 202
        )
        assert (
            wait_for(
                lambda: c.head("/image/process.webp", params={"proxy": url, "thumbnail": "60"}), 200
            ).status_code
            == 200
        )
        missing = c.get(
            "/image/process.webp", params={"proxy": remote.url("/pp/missing"), "thumbnail": "50"}
        )
        assert_error(missing, 500, "download-file-error")
    assert remote.count("/pp/scene.webp") == 1


def test_proxy_concurrent_first_requests(srv: Server, remote: Remote) -> None:
    url = remote.url("/slow/cc/earth.gif")  # no other test stores this file
    before = len(srv.stored_files())

    def get(_: int) -> tuple[int, bytes]:
        with srv.client() as c:
            r = c.get("/image/original", params={"proxy": url})
            return r.status_code, r.content

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(get, range(6)))
    assert {status for status, _ in results} == {200}
    assert len({body for _, body in results}) == 1
    assert remote.count("/slow/cc/earth.gif") == 1
    with srv.client() as c:
        aliases = c.get("/internal/aliases", params={"proxy": url}, headers=KEY).json()
    assert len(aliases["aliases"]) == 1
    assert len(srv.stored_files(expect=before + 1)) == before + 1


@pytest.mark.stores("filesystem")
def test_proxy_retention(tmp_path: Path, remote: Remote) -> None:
    env = {"PICTRS__MEDIA__RETENTION__PROXY": "2s", **ALLOW_LOOPBACK}
    s = Server(tmp_path, ["--api-key", API_KEY], env=env).start()
    try:
        with s.client() as c:
            kept = upload(c, remote_sample(remote, "scene.webp")).json()["files"][0]["file"]
            url = remote.url("/ret/cat.jpg")
            assert c.get("/image/original", params={"proxy": url}).status_code == 200
            assert (
                c.get("/image/process.png", params={"proxy": url, "thumbnail": "20"}).status_code
                == 200
            )
            assert len(s.stored_files(expect=3)) == 3
            [alias] = c.get("/internal/aliases", params={"proxy": url}, headers=KEY).json()[
                "aliases"
            ]
            # Poll by alias: an access through ?proxy= would keep it alive.
            gone = wait_for(lambda: c.get(f"/image/details/original/{alias}"), 404, timeout=20)
            assert_error(gone, 404, "alias-not-found")
            assert_error(
                c.get("/image/details/original", params={"proxy": url}), 404, "proxy-not-found"
            )
            # the proxied file and its variant went; the plain upload stays
            assert len(s.stored_files(expect=1)) == 1
            assert c.get(f"/image/original/{kept}").status_code == 200
            # asking again fetches it again
            assert c.get("/image/original", params={"proxy": url}).status_code == 200
            assert remote.count("/ret/cat.jpg") == 2
    finally:
        s.stop()
