"""An upload whose spool file cannot be written (the scratch folder is full, or gone) is
pict-rs's ``io-error`` 500, one warning line naming the folder and the errno, no
traceback, and nothing stored (pict-rs ``src/error.rs``: ``UploadError::Io`` is
``io-error``)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server


def scratch_of(srv: Server) -> Path:
    """The running server's own scratch folder, <temporary_directory>/pictrs-trio/<pid>-…"""
    assert srv.proc is not None
    (folder,) = (srv.root / "tmp" / "pictrs-trio").glob(f"{srv.proc.pid}-*")
    return folder


def assert_io_error(srv: Server, folder: Path, code: int) -> None:
    with srv.client() as c:
        r = c.post("/image", files={"images[]": ("big.bin", os.urandom(1024 * 1024))})
    assert r.status_code == 500
    body = r.json()
    says = f"temporary_directory {folder}: cannot write there: [Errno {code}] {os.strerror(code)}"
    assert body == {"msg": says, "code": "io-error"}
    assert srv.stop() == 0
    log = srv.log.read_text()
    failed = [line for line in log.splitlines() if "request failed" in line]
    assert len(failed) == 1 and failed[0].endswith(f"{says} (io-error)"), log
    assert " WARN " in failed[0]
    assert "Traceback" not in srv.output() and "unhandled" not in log
    assert srv.stored_files() == []


def test_a_scratch_folder_that_is_gone(tmp_path: Path) -> None:
    """A file where the scratch folder was (a tmp cleaner, an operator): ENOTDIR. Works as
    root too, where a folder's permissions would not stop anything."""
    srv = Server(tmp_path).start()
    folder = scratch_of(srv)
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    assert_io_error(srv, folder, errno.ENOTDIR)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs as the temporary folder: a real full disk (mount needs root with
    CAP_SYS_ADMIN; skipped elsewhere)."""
    where = tmp_path / "tmp"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(where)],
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True, capture_output=True)


def test_a_full_scratch_folder(tmp_path: Path, tiny_tmpfs: Path) -> None:
    srv = Server(tmp_path).start()
    folder = scratch_of(srv)
    assert_io_error(srv, folder, errno.ENOSPC)
    left = [p for p in tiny_tmpfs.rglob("*") if p.is_file()]
    assert left == []  # the partial spool file went with the request
