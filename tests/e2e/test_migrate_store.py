"""``python -m pictrs_trio migrate-store`` for real: media uploaded through a server on store
A moves to store B, a run killed with SIGKILL halfway resumes, the server refuses to start
while a migration is unfinished, and afterwards a server on B serves every alias with the
bytes it served before."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import msgspec
import trio

from pictrs_trio.config import load_all
from pictrs_trio.config.layered import nest
from pictrs_trio.repo.sqlite import open_sqlite_repo
from pictrs_trio.runtime.supervisor import CONFIG_ENV, FD_ENV
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
    assert "unfinished" in message
    command = f"pictrs-trio migrate-store filesystem -p {a} filesystem -p {b} sqlite -p {db}"
    assert f"running the same command again: {command}; or end it with" in message

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


def _filled_a(tmp_path: Path, n: int) -> tuple[Path, Path, Path, Filled]:
    a, b, db = tmp_path / "a", tmp_path / "b", tmp_path / "db"

    async def fill_a() -> Filled:
        async with open_sqlite_repo(db) as repo, open_file_store(a) as store:
            return await fill(repo, store, n, variant_every=0, motion_every=0)

    return a, b, db, trio.run(fill_a)


def _healthy_or_exited(server: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    """True once the server answers /healthz 200; False once it has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("the server neither served nor exited")


def test_a_server_and_a_migration_started_together_never_both_go_on(tmp_path: Path) -> None:
    """``run`` on A and ``migrate-store A B`` started at the same moment: one of them
    refuses, whichever was first to register with the repo."""
    a, b, db, filled = _filled_a(tmp_path, 200)
    port = free_port()
    run_argv = [sys.executable, "-m", "pictrs_trio", "run", "-a", f"127.0.0.1:{port}",
                "filesystem", "-p", str(a), "sqlite", "-p", str(db)]  # fmt: skip
    migrate_argv = [sys.executable, "-m", "pictrs_trio", "migrate-store", "--concurrency",
                    "1", "filesystem", "-p", str(a), "filesystem", "-p", str(b), "sqlite",
                    "-p", str(db)]  # fmt: skip
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(run_argv, cwd=REPO, env=_env(tmp_path), stdout=log, stderr=log)
        migration = subprocess.Popen(
            migrate_argv, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    try:
        served = _healthy_or_exited(server, f"http://127.0.0.1:{port}", 60)
        out, err = migration.communicate(timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        migration.kill()
        migration.wait()
    said = (tmp_path / "server.log").read_text()
    if served:  # the server went on: the migration refused and changed nothing
        assert migration.returncode == 1, out + err
        assert "another pictrs-trio process uses this repo" in err
        assert db_rows(db, "SELECT count(*) FROM store_migration_runs") == [(0,)]
        assert files_on_disk(b) == []
    else:  # the migration went on: the server refused before serving
        assert server.returncode == 1, said
        assert "migrate-store" in said and ("unfinished" in said or "is running" in said)
        assert migration.returncode == 0, out + err
        assert_all_in(b, db, filled)


def test_a_server_process_started_after_preflight_refuses_a_running_migration(
    tmp_path: Path,
) -> None:
    """A server process that passed its preflight before the migration began (a worker of
    ``server.workers`` > 1, started by the supervisor) checks again once it has joined the
    repo: it refuses, and the migration it found goes on to the end."""
    a, b, db, filled = _filled_a(tmp_path, 50)
    argv = [sys.executable, "-m", "pictrs_trio", "migrate-store", "--concurrency", "1",
            "filesystem", "-p", str(a), "filesystem", "-p", str(b), "sqlite", "-p",
            str(db)]  # fmt: skip
    migration = subprocess.Popen(
        argv, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while _runs(db) == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        migration.send_signal(signal.SIGSTOP)  # alive, holding the repo, and not finishing
        assert _runs(db) == 1
        done = _server_process(tmp_path, a, db)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "a migrate-store is running on this repo" in done.stderr, done.stderr
    finally:
        migration.send_signal(signal.SIGCONT)
    out, err = migration.communicate(timeout=120)
    assert migration.returncode == 0, out + err
    assert_all_in(b, db, filled)
    # Dead or finished, a migration is still checked once the process has joined: here the
    # media are in B, so a server process on A refuses.
    done = _server_process(tmp_path, a, db)
    assert done.returncode == 1 and "point store at filesystem -p" in done.stderr, done.stderr


def _runs(db: Path) -> int:
    try:
        return int(db_rows(db, "SELECT count(*) FROM store_migration_runs")[0][0])  # type: ignore[arg-type]
    except Exception:  # not created yet, or busy for a moment
        return 0


def _server_process(root: Path, files: Path, db: Path) -> subprocess.CompletedProcess[str]:
    """One server process as the supervisor starts it (no preflight: the supervisor made
    it), on a socket of its own."""
    config = load_all(
        env={},
        overrides=nest(
            {
                "server.address": f"127.0.0.1:{free_port()}",
                "server.temporary_directory": str(root / "tmp"),
                "store.type": "filesystem",
                "store.path": str(files),
                "repo.type": "sqlite",
                "repo.path": str(db),
            }
        ),
    ).config
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.set_inheritable(True)
        env = {**os.environ, CONFIG_ENV: msgspec.json.encode(config).decode(),
               FD_ENV: str(listener.fileno())}  # fmt: skip
        return subprocess.run(
            [sys.executable, "-m", "pictrs_trio.runtime.supervisor"],
            cwd=REPO, env=env, pass_fds=(listener.fileno(),), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip


def test_abandon_when_the_new_folder_is_gone(tmp_path: Path) -> None:
    """The new store's folder is gone (an unmounted volume): ``--abandon`` does not make it
    again, moves every file back, and says the copies there were not removed."""
    a, b, db, filled = _filled_a(tmp_path, 30)
    ((lost,),) = db_rows(db, "SELECT identifier FROM hashes ORDER BY hash DESC LIMIT 1")
    data = (a / str(lost)).read_bytes()
    (a / str(lost)).unlink()  # the run cannot finish: one file is missing
    first = migrate_store(tmp_path, a, b, db)
    assert first.returncode == 1 and "moved 29 files" in first.stdout, first.stdout
    (a / str(lost)).write_bytes(data)
    shutil.rmtree(b)

    done = migrate_store(tmp_path, a, b, db, "--abandon")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "moved back 29 of 29 files" in done.stdout
    assert f"Copies in filesystem -p {b} were not removed ({b} is not a folder)" in done.stdout
    assert not b.exists()
    assert_all_in(a, db, filled)
    assert db_rows(db, "SELECT finished, abandoned IS NOT NULL FROM store_migration_runs") == [
        (None, 1)
    ]
