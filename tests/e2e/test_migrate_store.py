"""``python -m pictrs_trio migrate-store`` for real: media uploaded through a server on store
A moves to store B, a run killed with SIGKILL halfway resumes, the server refuses to start
while a migration is unfinished, and afterwards a server on B serves every alias with the
bytes it served before."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import trio

from pictrs_trio.repo.sqlite import open_sqlite_repo
from pictrs_trio.store.file import open_file_store
from tests.e2e.conftest import REPO, Server, free_port
from tests.migrate_helpers import Filled, assert_all_in, db_rows, files_on_disk, fill

# Files of the runs killed or stopped halfway: two pages of the walk (services/migrate.py
# PAGE, 100). The SIGKILL comes once 100 are moved, so the resumed run skips a whole page
# and finishes the other.
FILES = 150


def tiny_png(i: int, size: int = 8) -> bytes:
    """A ``size`` x ``size`` RGB PNG in a colour of its own."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    pixel = bytes([i % 256, (i // 256) % 256, 255 - i % 256])
    rows = b"".join(b"\x00" + pixel * size for _ in range(size))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def migrate_store(
    root: Path, a: Path, b: Path, db: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "migrate-store", *extra, "filesystem", "-p",
         str(a), "filesystem", "-p", str(b), "sqlite", "-p", str(db)],
        cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PICTRS__SERVER__TEMPORARY_DIRECTORY": str(root / "tmp")}


def refused_start(root: Path, files: Path, db: Path) -> str:
    """Start a server on ``files``; it must exit 1 before serving. Returns its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "pictrs_trio", "run", "-a", f"127.0.0.1:{free_port()}",
         "filesystem", "-p", str(files), "sqlite", "-p", str(db)],
        cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stderr


def serves(server: Server, expected: dict[str, bytes]) -> None:
    with server.client() as c:
        for target, data in expected.items():
            r = c.get(target)
            assert r.status_code == 200, (target, r.text)
            assert r.content == data, target


def test_media_uploaded_on_a_serves_the_same_from_b(tmp_path: Path) -> None:
    server = Server(tmp_path, ["--max-file-count", "10"]).start()
    a, db, b = server.files, server.db, tmp_path / "b"
    served: dict[str, bytes] = {}
    with server.client() as c:
        for start in range(0, 40, 10):
            files = [("images[]", (f"{i}.png", tiny_png(i), "image/png"))
                     for i in range(start, start + 10)]  # fmt: skip
            r = c.post("/image", files=files)
            assert r.status_code == 201, r.text
            for entry in r.json()["files"]:
                target = f"/image/original/{entry['file']}"
                served[target] = c.get(target).content
        for target in list(served)[:6]:  # a few variants too
            thumb = f"/image/process.webp?src={target.rsplit('/', 1)[1]}&thumbnail=4"
            r = c.get(thumb)
            assert r.status_code == 200, r.text
            served[thumb] = r.content
    server.stop()
    in_a = files_on_disk(a)
    assert len(in_a) == 46
    # One variant's file is lost: without --skip-missing-files the run fails on it.
    ((lost,),) = db_rows(db, "SELECT identifier FROM variants ORDER BY id LIMIT 1")
    (a / str(lost)).unlink()

    first = migrate_store(tmp_path, a, b, db)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "moved 45 files" in first.stdout and "failed 1" in first.stdout
    assert "Unfinished" in first.stdout
    assert "--skip-missing-files" in first.stdout + first.stderr

    message = refused_start(tmp_path, b, db)
    assert "unfinished" in message and f"migrate-store filesystem -p {a}" in message

    second = migrate_store(tmp_path, a, b, db, "--skip-missing-files")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "moved 0 files" in second.stdout and "skipped 45" in second.stdout
    assert "missing 1" in second.stdout and "Finished" in second.stdout
    assert f"PICTRS__STORE__PATH={b}" in second.stdout

    server.files = b
    server.start()
    serves(server, served)  # the lost variant is rendered again, the same way
    server.stop()
    assert len(files_on_disk(a)) == 45  # the old store is left as it was
    # A server on the old store would answer 404 and take uploads nobody moves: refused.
    message = refused_start(tmp_path, a, db)
    assert f"moved the media to filesystem -p {b}, but the configured store is" in message
    assert message.count("\n") == 1 and f"point store at filesystem -p {b}" in message
    # A third run of the same command finds every file in B already.
    third = migrate_store(tmp_path, a, b, db)
    assert third.returncode == 0 and "moved 0 files" in third.stdout, third.stdout
    assert "failed 0" in third.stdout and "Finished" in third.stdout


def test_a_run_killed_halfway_resumes_without_copying_twice(tmp_path: Path) -> None:
    a, b, db = tmp_path / "a", tmp_path / "b", tmp_path / "db"

    async def fill_a() -> Filled:
        async with open_sqlite_repo(db) as repo, open_file_store(a) as store:
            return await fill(repo, store, FILES, variant_every=0, motion_every=0)

    filled = trio.run(fill_a)
    argv = [sys.executable, "-m", "pictrs_trio", "migrate-store", "--concurrency", "2",
            "filesystem", "-p", str(a), "filesystem", "-p", str(b), "sqlite", "-p",
            str(db)]  # fmt: skip
    with (tmp_path / "killed.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=_env(tmp_path), stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    moved = 0
    while moved < 100 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
        if (db / "pictrs.sqlite3").exists():
            moved = _moved(db)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    moved = _moved(db)
    print(f"killed with {moved} of {FILES} files moved")
    assert 100 <= moved < FILES, moved

    assert "unfinished" in refused_start(tmp_path, b, db)

    second = migrate_store(tmp_path, a, b, db)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"moved {FILES - moved} files" in second.stdout, second.stdout
    assert f"skipped {moved} (moved before)" in second.stdout
    # Every file once in B, byte-identical, nothing half-written left over.
    assert_all_in(b, db, filled)

    server = Server(tmp_path)
    server.files, server.db = b, db
    server.start()
    with server.client() as c:
        for alias, data in filled.originals.items():
            r = c.get(f"/image/original/{alias}")
            assert r.status_code == 200 and r.content == data, alias
    server.stop()


def test_sigterm_stops_between_files_and_says_how_far_it_got(tmp_path: Path) -> None:
    a, b, db = tmp_path / "a", tmp_path / "b", tmp_path / "db"

    async def fill_a() -> Filled:
        async with open_sqlite_repo(db) as repo, open_file_store(a) as store:
            return await fill(repo, store, FILES, variant_every=0, motion_every=0)

    filled = trio.run(fill_a)
    argv = [sys.executable, "-m", "pictrs_trio", "migrate-store", "--concurrency", "1",
            "filesystem", "-p", str(a), "filesystem", "-p", str(b), "sqlite", "-p",
            str(db)]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while _moved(db) < 30 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    moved = _moved(db)
    assert 30 <= moved < FILES
    assert f"moved {moved} files".encode() in out and b"Interrupted" in out
    # Stopped cleanly between files: the new store holds exactly what was moved.
    assert len(files_on_disk(b)) == moved
    assert db_rows(db, "SELECT count(*) FROM journal_intents") == [(0,)]
    done = migrate_store(tmp_path, a, b, db)
    assert f"moved {FILES - moved} files" in done.stdout, done.stdout
    assert_all_in(b, db, filled)


def _moved(db: Path) -> int:
    try:
        return int(db_rows(db, "SELECT count(*) FROM store_migrations")[0][0])  # type: ignore[arg-type]
    except Exception:  # not created yet, or busy for a moment
        return 0


def test_progress_is_logged_when_not_on_a_terminal(tmp_path: Path) -> None:
    """Plain log lines, no bar, when stderr is not a terminal (here: a pipe)."""
    a, b, db = tmp_path / "a", tmp_path / "b", tmp_path / "db"

    async def fill_a() -> None:
        async with open_sqlite_repo(db) as repo, open_file_store(a) as store:
            await fill(repo, store, 5, variant_every=0, motion_every=0)

    trio.run(fill_a)
    done = migrate_store(tmp_path, a, b, db)
    assert done.returncode == 0
    assert "\r" not in done.stderr and "[#" not in done.stderr
    assert "5 files to move" in done.stdout
