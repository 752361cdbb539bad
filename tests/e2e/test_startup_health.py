"""Start-up failures are one line naming what, with exit status 2 for configuration and 1
for the rest; one listening socket that no second instance can join; and /healthz that
says 503 and which part is down."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, Server, free_port
from tests.e2e.test_upload_serve_delete import upload
from tests.s3 import MotoServer

TOOLS = ("ffmpeg", "ffprobe", "exiftool", "cjxl", "djxl", "jxlinfo")


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``pictrs-trio run`` expecting it to stop by itself: (exit status, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "run", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr


def data_args(root: Path) -> list[str]:
    return ["filesystem", "-p", str(root / "files"), "sqlite", "-p", str(root / "sqlite")]


def tools_dir(tmp_path: Path) -> Path:
    """A folder of links to the media tools, to take one away."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (folder / tool).symlink_to(found)
    return folder


def test_start_up_failures_are_one_line(tmp_path: Path) -> None:
    port = free_port()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    only_python = tmp_path / "only-python"
    only_python.mkdir()
    (only_python / "python3").symlink_to(sys.executable)
    cases = [
        (["-a", f"127.0.0.1:{port}", "--certificate", str(tmp_path / "no.pem"),
          "--private-key", str(tmp_path / "no.key"), *data_args(tmp_path)], {}, 1,
         f"server.certificate {tmp_path / 'no.pem'} does not exist"),
        (["-a", f"127.0.0.1:{port}", "filesystem", "-p", str(blocker / "files"), "sqlite", "-p",
          str(tmp_path / "sqlite")], {}, 1, f"store.path {blocker / 'files'}"),
        (["-a", f"127.0.0.1:{port}", "filesystem", "-p", str(tmp_path / "files"), "sqlite",
          "-p", str(blocker)], {}, 1, f"repo.path {blocker}"),
        (["-a", f"127.0.0.1:{port}", *data_args(tmp_path)], {"PATH": str(only_python)}, 1,
         "ffmpeg, ffprobe, exiftool, cjxl, djxl, jxlinfo not found on PATH"),
        (["-a", f"127.0.0.1:{port}", "--media-preprocess-steps", "resize=nope",
          *data_args(tmp_path)], {}, 2, "media.preprocess_steps"),
        (["-a", f"127.0.0.1:{port}", "--temporary-directory", str(blocker),
          *data_args(tmp_path)], {}, 1, f"server.temporary_directory {blocker}"),
        (["-a", f"127.0.0.1:{port}", "object-storage", "-e", "ftp://127.0.0.1:9", "-b", "b",
          "-r", "r", "-a", "k", "-s", "s", "sqlite", "-p", str(tmp_path / "os-sqlite")], {}, 2,
         "store.endpoint 'ftp://127.0.0.1:9' is not an http(s) URL"),
    ]  # fmt: skip
    for args, env, status, says in cases:
        code, stderr = start(tmp_path, *args, env=env)
        lines = stderr.strip().splitlines()
        assert (code, len(lines)) == (status, 1), (args, stderr)
        assert lines[0].startswith("error: ") and says in lines[0], lines[0]
    assert not (tmp_path / "os-sqlite").exists()  # refused before the repo was made


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = start(tmp_path, "-a", f"127.0.0.1:{port}", *data_args(tmp_path))
    assert code == 1
    assert stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (is another pictrs-trio or pict-rs running there?)"
    )
    # Refused before anything was opened: a second instance on a running one's data would
    # otherwise migrate its database under it.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_no_second_instance_joins_a_port(tmp_path: Path, samples: dict[str, Path]) -> None:
    """With several server processes, a second instance on the same port (another data
    folder) is refused at once; every request keeps going to the first one's store."""
    first = tmp_path / "first"
    first.mkdir()
    srv = Server(first, env={"PICTRS__SERVER__WORKERS": "2"}).start()
    try:
        other = tmp_path / "other"
        code, stderr = start(
            other, "-a", f"127.0.0.1:{srv.port}", *data_args(other),
            env={"PICTRS__SERVER__WORKERS": "2"},
        )  # fmt: skip
        assert code == 1 and "cannot listen on" in stderr, stderr
        assert not (other / "sqlite").exists()  # nothing opened before the port
        with srv.client() as c:
            alias = upload(c, samples["test.png"]).json()["files"][0]["file"]
        for _ in range(10):
            with httpx.Client(base_url=srv.url) as fresh:  # a new connection each time
                assert fresh.get(f"/image/original/{alias}").status_code == 200
    finally:
        srv.stop()


def wait_status(url: str, status: int, timeout: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as c:  # one client: httpx.get builds a TLS context per call
        while True:
            r = c.get(url + "/healthz")
            if r.status_code == status or time.monotonic() > deadline:
                return r
            time.sleep(0.1)


def test_healthz_when_the_store_cannot_be_written(tmp_path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    srv = Server(tmp_path).start()
    try:
        lock = subprocess.run(["chattr", "+i", str(srv.files)], capture_output=True)
        if lock.returncode != 0:
            pytest.skip(f"cannot make a folder immutable here: {lock.stderr!r}")
        try:
            r = wait_status(srv.url, 503)
            assert r.status_code == 503
            body = r.json()
            assert body["code"] == "file-io-error"
            assert body["msg"].startswith(f"store: Store root {srv.files} is not writable")
        finally:
            subprocess.run(["chattr", "-i", str(srv.files)], check=True)
        assert wait_status(srv.url, 200).status_code == 200
    finally:
        srv.stop()


def test_healthz_when_no_engine_worker_can_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pyvips.py").write_text("raise ImportError('libvips is broken here')\n")
    srv = Server(tmp_path, env={"PYTHONPATH": str(broken)})
    srv.start_no_wait()
    try:
        r = wait_status(srv.url, 503)
        assert r.status_code == 503
        assert r.json()["code"] == "command-error"
        assert r.json()["msg"].startswith("engine: no engine worker is running")
    finally:
        srv.stop()


def test_healthz_when_a_tool_goes_missing(tmp_path: Path) -> None:
    tools = tools_dir(tmp_path)
    path = f"{tools}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/nonexistent"
    srv = Server(tmp_path, env={"PATH": path}).start()
    try:
        assert httpx.get(srv.url + "/healthz").status_code == 200
        (tools / "ffprobe").unlink()
        r = httpx.get(srv.url + "/healthz")
        assert r.status_code == 503
        assert r.json() == {
            "msg": "tools: ffprobe not found on PATH (Debian: ffmpeg)",
            "code": "command-not-found",
        }
    finally:
        srv.stop()


def test_object_storage_that_cannot_be_used_is_one_line(tmp_path: Path, moto: MotoServer) -> None:
    """A missing bucket, an endpoint nobody answers on: exit 1 with one line naming the
    endpoint and bucket and what to check; never the secret."""
    port = free_port()
    repo = ["sqlite", "-p", str(tmp_path / "sqlite")]
    cases = [
        (moto.run_args("no-such-bucket"),
         f"error: object storage {moto.endpoint} bucket no-such-bucket: bucket 'no-such-bucket' "
         "does not exist (NoSuchBucket); create it first"),
        (["object-storage", "-e", "http://127.0.0.1:9", "-u", "-b", "media", "-r", "r",
          "-a", "KEY", "-s", "SECRET", "--client-timeout", "2"],
         "error: cannot reach object storage http://127.0.0.1:9 bucket media: "),
    ]  # fmt: skip
    for store, says in cases:
        code, stderr = start(tmp_path, "-a", f"127.0.0.1:{port}", *store, *repo)
        lines = stderr.strip().splitlines()
        assert (code, len(lines)) == (1, 1), stderr
        assert lines[0].startswith(says), lines[0]
        assert moto.run_args("x")[-1] not in stderr and "SECRET" not in stderr


def test_healthz_names_object_storage_when_it_goes(
    tmp_path: Path, moto: MotoServer, samples: dict[str, Path]
) -> None:
    srv = Server(tmp_path, store="object", moto=moto).start()
    bucket = srv.bucket
    with srv.client() as c:
        assert upload(c, samples["test.png"]).status_code == 201
        moto.client().delete_object(Bucket=bucket, Key=moto.keys(bucket)[0])
        moto.client().delete_bucket(Bucket=bucket)
        answer = c.get("/healthz")
        assert answer.status_code == 503
        assert answer.json()["msg"].startswith(f"store: object storage {moto.endpoint} bucket ")
        assert "NoSuchBucket" in answer.json()["msg"]
    srv.stop()
