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
import re
import shlex
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
from tests.e2e.conftest import REPO, Server, free_port
from tests.e2e.test_migrate_store import _moved
from tests.e2e.test_upload_serve_delete import upload
from tests.migrate_helpers import Filled, db_rows, fill, named_files, stored
from tests.s3 import SECRET_KEY, MotoServer

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
    multipart upload until the test ends: the server is caught mid-upload. It records each
    request it forwards: (method, path and query, Range header)."""

    def __init__(self, target: str) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        self.stalled = threading.Event()
        self.first_part = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                proxy.seen.append((self.command, self.path, self.headers.get("range")))
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
                # A HEAD's length is the object's, not that of its (empty) body.
                length = answer.headers.get("content-length", "0")
                self.send_header(
                    "content-length", str(len(answer.content)) if self.command != "HEAD" else length
                )
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


def test_a_served_read_is_one_get(
    tmp_path: Path, moto: MotoServer, stalling: StallingProxy, samples: dict[str, Path]
) -> None:
    """The server learns an object's length from the GET that brings its bytes: one
    request per read, where a HEAD then a GET were two. A HEAD, a revalidation (304) and a
    range from the end ask the length alone first."""
    srv = Server(tmp_path, store="object", moto=moto)
    srv.store_endpoint = stalling.endpoint
    srv.start()
    with srv.client() as c:
        alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
        (key,) = moto.keys(srv.bucket)
        data = moto.get(srv.bucket, key)
        url = f"/image/original/{alias}"
        mark = [0]

        def sent() -> list[tuple[str, str | None]]:
            mine = [(m, r) for m, path, r in stalling.seen if path.split("?")[0].endswith(key)]
            new, mark[0] = mine[mark[0] :], len(mine)
            return new

        sent()  # the upload
        answer = c.get(url)
        assert (answer.status_code, answer.content) == (200, data)
        assert sent() == [("GET", None)]
        answer = c.get(url, headers={"range": "bytes=10-19"})
        assert (answer.status_code, answer.content) == (206, data[10:20])
        assert answer.headers["content-range"] == f"bytes 10-19/{len(data)}"
        assert sent() == [("GET", "bytes=10-19")]
        answer = c.get(url, headers={"range": f"bytes={len(data)}-"})
        assert answer.status_code == 416
        assert answer.headers["content-range"] == f"bytes */{len(data)}"
        assert sent() == [("GET", f"bytes={len(data)}-")]
        answer = c.head(url)
        assert answer.headers["content-length"] == str(len(data))
        assert sent() == [("HEAD", None)]
        answer = c.get(url, headers={"if-none-match": answer.headers["etag"]})
        assert answer.status_code == 304
        assert sent() == [("HEAD", None)]
        answer = c.get(url, headers={"range": "bytes=-5"})
        assert (answer.status_code, answer.content) == (206, data[-5:])
        assert sent() == [("HEAD", None), ("GET", f"bytes={len(data) - 5}-{len(data) - 1}")]
    assert srv.stop() == 0


def wait_log(srv: Server, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while text not in srv.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = srv.log.read_text()
    assert text in log, log
    return log


def test_a_bucket_is_audited_once_a_week(
    tmp_path: Path, moto: MotoServer, stalling: StallingProxy
) -> None:
    """The first start lists the bucket (and leaves a foreign object alone); the next start
    on it, within the week, lists nothing."""
    first = Server(tmp_path, store="object", moto=moto)
    moto.client().put_object(Bucket=first.bucket, Key="aa/bb/theirs.png", Body=b"theirs")
    first.store_endpoint = stalling.endpoint
    first.start()
    log = wait_log(first, "store audit: 1 files listed, 1 unknown")
    assert "the store holds 1 files this repo does not know (for example aa/bb/theirs.png)" in log
    assert first.stop() == 0
    listed = [path for _, path, _ in stalling.seen if "list-type=2" in path]
    assert len(listed) == 1
    second = Server(tmp_path, store="object", moto=moto)
    second.store_endpoint = stalling.endpoint
    second.start()
    wait_log(second, "store audit: not due (object storage: once a week; the last began ")
    assert second.stop() == 0
    assert [path for _, path, _ in stalling.seen if "list-type=2" in path] == listed
    assert moto.keys(first.bucket) == ["aa/bb/theirs.png"]


# Issue 10's must-show: a migration of 300 files into a bucket, killed halfway and resumed.
FILES = 300


def test_migrate_store_to_a_bucket_killed_halfway_resumes(tmp_path: Path, moto: MotoServer) -> None:
    """300 files from a folder into a bucket: SIGKILL halfway, run again, and each run says
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
    assert 100 <= moved < FILES, (moved, (tmp_path / "killed.log").read_text())
    # The server refuses, naming the very command to run again: every flag as typed (-u,
    # -r, -a), the secret key left out.
    refused = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "run", "-a", f"127.0.0.1:{free_port()}",
         *moto.run_args(server.bucket), "sqlite", "-p", str(db)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    secret = moto.run_args(server.bucket).index("-s") + 1
    typed = [*argv[3:]]
    typed[typed.index(moto.run_args(server.bucket)[secret])] = "<secret-key>"
    hint = shlex.join(["pictrs-trio", *typed])
    assert f"again: {hint} (with the real <secret-key>); or end it" in refused.stderr, (
        refused.stderr
    )
    assert "-u -b" in hint and SECRET_KEY not in refused.stderr

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


def test_a_migration_to_a_bucket_deleted_halfway_is_abandoned(
    tmp_path: Path, moto: MotoServer
) -> None:
    """The bucket a migration was filling is deleted while it runs. The migration cannot
    finish, so the server refuses to start, and says how to get out; ``--abandon`` moves the
    moved files back to their copies in the folder, and a server on the folder serves
    every alias byte-identical again."""
    a, db = tmp_path / "a", tmp_path / "db"

    async def fill_a() -> Filled:
        async with open_sqlite_repo(db) as repo, open_file_store(a) as store:
            return await fill(repo, store, 200, variant_every=0, motion_every=0)

    filled = trio.run(fill_a)
    before = named_files(db)
    bucket = moto.create_bucket()
    env = {**os.environ, "PICTRS__SERVER__TEMPORARY_DIRECTORY": str(tmp_path / "tmp")}
    stores = ["filesystem", "-p", str(a), *moto.run_args(bucket), "sqlite", "-p", str(db)]
    migrate = [sys.executable, "-m", "pictrs_trio", "migrate-store", "--concurrency", "2"]
    with (tmp_path / "killed.log").open("wb") as log:
        proc = subprocess.Popen([*migrate, *stores], cwd=REPO, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while _moved(db) < 60 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # a copy or two may be half-written too
    proc.wait()
    moved = _moved(db)
    assert 60 <= moved < 200
    client = moto.client()
    for key in [*moto.keys(bucket), "health-check"]:
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pictrs_trio", *argv], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    server_argv = ["run", "-a", f"127.0.0.1:{free_port()}", "filesystem", "-p", str(a),
                   "sqlite", "-p", str(db)]  # fmt: skip
    refused = run(*server_argv)
    assert refused.returncode == 1 and "or end it with migrate-store --abandon" in refused.stderr
    again = run(*migrate[3:], *stores)  # the bucket is gone: it cannot go on
    assert again.returncode == 1, again.stdout + again.stderr

    abandoned = run(*migrate[3:], "--abandon", *stores)
    assert abandoned.returncode == 0, abandoned.stdout + abandoned.stderr
    assert f"moved back {moved} of {moved} files" in abandoned.stdout, abandoned.stdout
    assert "Abandoned: the repo names the files in filesystem -p" in abandoned.stdout
    # Removing from a bucket that is gone finds nothing to remove, as S3 answers it (404).
    removed = re.search(r"removed (\d+) copies", abandoned.stdout)
    assert removed is not None and int(removed.group(1)) >= moved, abandoned.stdout
    assert named_files(db) == before
    assert db_rows(db, "SELECT count(*) FROM store_migrations") == [(0,)]

    server = Server(tmp_path, store="filesystem")
    server.files, server.db = a, db
    server.start()
    with server.client() as c:
        for alias, data in filled.originals.items():
            r = c.get(f"/image/original/{alias}")
            assert r.status_code == 200 and r.content == data, alias
    assert server.stop() == 0
    # Over: nothing more to abandon.
    nothing = run(*migrate[3:], "--abandon", *stores)
    assert nothing.returncode == 1 and "no unfinished migrate-store" in nothing.stderr
