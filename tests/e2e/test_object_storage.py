"""Object storage end to end, what only it has: reads redirected to ``public_endpoint``, a
multipart upload cut off by SIGKILL that recovery aborts at the next start, and a
``migrate-store`` from a folder into a bucket, killed halfway and resumed.

(The e2e tests of modules with ``STORES`` that go through the store run on object
storage too: uploads, reads, deletes, variants, downloads, crashes and recovery.)
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from pictrs_trio.repo.sqlite import open_sqlite_repo
from pictrs_trio.store.file import open_file_store
from tests.e2e.conftest import REPO, Server
from tests.e2e.test_migrate_store import FILES, _moved
from tests.e2e.test_upload_serve_delete import upload
from tests.migrate_helpers import Filled, fill, named_files, stored
from tests.s3 import MotoServer

PUBLIC = "https://cdn.example.com/media"


def test_public_endpoint_redirects_reads(
    tmp_path: Path, moto: MotoServer, samples: dict[str, Path]
) -> None:
    env = {"PICTRS__STORE__PUBLIC_ENDPOINT": PUBLIC + "/"}
    srv = Server(tmp_path, env=env, store="object", moto=moto).start()
    with srv.client() as c:
        alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
        (original,) = moto.keys(srv.bucket)
        for method in ("GET", "HEAD"):
            answer = c.request(method, f"/image/original/{alias}")
            assert answer.status_code == 303, (method, answer.text)
            assert answer.headers["location"] == f"{PUBLIC}/{original}"
            assert answer.content == b""
        # A variant: rendered on the first GET, then redirected to as well.
        answer = c.get(f"/image/process.webp?src={alias}&thumbnail=40")
        assert answer.status_code == 303
        variant = answer.headers["location"].removeprefix(PUBLIC + "/")
        assert sorted(moto.keys(srv.bucket)) == sorted([original, variant])
        assert variant.endswith(".webp")
        assert moto.get(srv.bucket, variant)[8:12] == b"WEBP"
        head = c.head(f"/image/process.webp?src={alias}&thumbnail=40")
        assert (head.status_code, head.headers["location"]) == (303, f"{PUBLIC}/{variant}")
        # Details and the rest do not redirect.
        assert c.get(f"/image/details/original/{alias}").status_code == 200
    assert srv.stop() == 0


class StallingProxy:
    """An HTTP proxy to moto on loopback that holds any request for a second part of a
    multipart upload until the test ends: the server is caught mid-upload."""

    def __init__(self, target: str) -> None:
        self.stalled = threading.Event()
        self.first_part = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                if "partNumber=2" in self.path:
                    proxy.stalled.set()
                    proxy.release.wait(60)
                    return
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if len(body) < length:
                    return  # the client died while sending
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                answer = httpx.request(
                    self.command, target + self.path, headers=headers, content=body, timeout=30
                )
                if "partNumber=1" in self.path:
                    proxy.first_part.set()
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stalling(moto: MotoServer) -> Iterator[StallingProxy]:
    proxy = StallingProxy(moto.endpoint)
    yield proxy
    proxy.close()


def test_sigkill_mid_multipart_upload_is_aborted_by_recovery(
    tmp_path: Path, moto: MotoServer, stalling: StallingProxy
) -> None:
    """A 9 MiB backgrounded upload is stored raw by multipart upload; the process dies after
    its first part. The next start finds the journal intent and aborts the upload: no
    unfinished upload and no object is left in the bucket."""
    srv = Server(tmp_path, ["--api-key", "k"], store="object", moto=moto)
    srv.store_endpoint = stalling.endpoint
    srv.start()
    data = os.urandom(9 * 1024 * 1024)

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
            httpx.post(
                f"{srv.url}/image/backgrounded",
                files=[("images[]", ("big.png", data, "image/png"))],
                timeout=60,
            )

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert stalling.stalled.wait(30), "the multipart upload never reached its second part"
    assert stalling.first_part.wait(30), "its first part was never stored"
    assert len(moto.uploads(srv.bucket)) == 1
    srv.stop(signal.SIGKILL)
    stalling.close()
    sender.join(30)

    restarted = Server(tmp_path, store="object", moto=moto).start()  # straight to moto
    deadline = time.monotonic() + 20
    while moto.uploads(srv.bucket) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert moto.uploads(srv.bucket) == []
    assert moto.keys(srv.bucket) == []
    assert restarted.stop() == 0


def test_migrate_store_to_a_bucket_killed_halfway_resumes(tmp_path: Path, moto: MotoServer) -> None:
    """150 files from a folder into a bucket: SIGKILL halfway, run again, and each run says
    how many it moved; then a server on the bucket serves every alias byte-identical, and
    the bucket holds exactly the files the rows name (nothing twice, nothing half-written)."""
    a, db = tmp_path / "a", tmp_path / "db"
    server = Server(tmp_path, store="object", moto=moto)  # its bucket is the destination
    server.db = db

    async def fill_a() -> Filled:
        async with open_sqlite_repo(db) as repo, open_file_store(a) as store:
            return await fill(repo, store, FILES, variant_every=0, motion_every=0)

    filled = trio.run(fill_a)
    env = {**os.environ, "PICTRS__SERVER__TEMPORARY_DIRECTORY": str(tmp_path / "tmp")}
    argv = [sys.executable, "-m", "pictrs_trio", "migrate-store", "--concurrency", "4",
            "filesystem", "-p", str(a), *moto.run_args(server.bucket),
            "sqlite", "-p", str(db)]  # fmt: skip
    with (tmp_path / "killed.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    moved = 0
    while moved < 100 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
        if (db / "pictrs.sqlite3").exists():
            moved = _moved(db)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    moved = _moved(db)
    print(f"killed with {moved} of {FILES} files moved")
    assert 100 <= moved < FILES, (moved, (tmp_path / "killed.log").read_text())

    second = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"moved {FILES - moved} files" in second.stdout, second.stdout
    assert f"skipped {moved} (moved before)" in second.stdout

    expected = stored(db, filled)
    assert set(expected) == named_files(db)
    assert moto.keys(server.bucket) == sorted(expected)
    assert moto.uploads(server.bucket) == []
    server.start()
    with server.client() as c:
        for alias, data in filled.originals.items():
            r = c.get(f"/image/original/{alias}")
            assert r.status_code == 200 and r.content == data, alias
    assert server.stop() == 0
